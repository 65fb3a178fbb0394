"""Fixtures for the server tests: apps on the default model and on ``tiny_package``, test images.

Apps run with one intra-op thread (the tests' reference predictors too), so the server's masks
can be compared with ``SamPredictor``'s for exact equality.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import EXAMPLE, make_client  # noqa: E402


@pytest.fixture(scope="session")
def example_png() -> bytes:
    return EXAMPLE.read_bytes()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The default model, with limits small enough to reach in a test."""
    with make_client(max_points=8, max_boxes=4, max_prompts=4, max_pixels=2_000_000) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def image_id(client: TestClient, example_png: bytes) -> str:
    response = client.post("/v1/images", content=example_png)
    assert response.status_code == 200, response.text
    return response.json()["image_id"]
