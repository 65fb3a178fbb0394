"""Fixtures of the engine tests: a tiny ONNX model built with onnx.helper (see engine_toys)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # engine_toys, importable by tests and the CLI

from engine_toys import build_tiny_model  # noqa: E402  (also registers the toy node types)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("engine") / "tiny.onnx")
