"""Helpers shared by the server tests: test images, PNG bytes, a test client on a fresh app."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from samdeploy.serve import ServeSettings, create_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shapes.png"


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def make_client(**settings: object) -> TestClient:
    """A test client on a fresh app; use it as a context manager (runs the lifespan).

    One intra-op thread for every model call, lone clicks included (``solo_threads`` 1 unless
    given): the reference predictors run on one thread, and the masks must be equal to theirs.
    """
    settings.setdefault("solo_threads", 1)
    return TestClient(create_app(ServeSettings(threads=1, **settings)))  # type: ignore[arg-type]
