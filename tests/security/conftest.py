"""Fixtures of the security tests: a private checksum cache, and writable copies of a package."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import samdeploy.package as package_module
from samdeploy.package import ChecksumCache, write_manifest
from samdeploy.sam.model import DEFAULT_MODEL


@pytest.fixture(autouse=True)
def private_checksum_cache(tmp_path_factory, monkeypatch) -> ChecksumCache:
    """Each test starts with an empty checksum cache in its own folder (never the user's)."""
    monkeypatch.setenv("SAMDEPLOY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    cache = ChecksumCache()
    monkeypatch.setattr(package_module, "CHECKSUMS", cache)
    return cache


@pytest.fixture
def package_copy(tmp_path) -> Callable[..., Path]:
    """``package_copy(edit=None, name="pkg")``: a copy of the embedded default package under
    ``tmp_path``, its manifest passed through ``edit(manifest)`` (which edits it in place)."""

    def make(edit: Callable[[dict[str, Any]], None] | None = None, name: str = "pkg") -> Path:
        target = tmp_path / name
        shutil.copytree(DEFAULT_MODEL, target, ignore=shutil.ignore_patterns("checkpoint.pth"))
        if edit is not None:
            manifest = json.loads((target / "model.json").read_text())
            edit(manifest)
            write_manifest(target, manifest)
        return target

    return make
