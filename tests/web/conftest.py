"""Fixtures for the browser tests: one real ``samdeploy serve`` process per module on a free loopback
port, one headless Chromium per session, a fresh page per test, and the in-process reference predictor.

The whole folder is skipped, with the reason, where Chromium or Playwright is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pagedriver import ROOT, chromium, missing_browser, open_page, serve_process

EXAMPLE = ROOT / "examples" / "shapes.png"

_missing = missing_browser()
if _missing:
    pytest.skip(f"browser tests need Chromium and Playwright: {_missing}", allow_module_level=True)


@pytest.fixture(scope="session")
def example_image() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(EXAMPLE).convert("RGB"))


@pytest.fixture(scope="session")
def predictor(example_image):
    """SamPredictor on the embedded model with the example image set: the masks the page must show."""
    import samdeploy

    # One intra-op thread on both sides, as the server runs below: identical arithmetic.
    predictor = samdeploy.SamPredictor(samdeploy.load_model(threads=1))
    predictor.set_image(example_image)
    return predictor


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_process(None, "--threads", "1") as url:
        yield url


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser, server):
    """The web page, fresh; the test fails if the page raised a JavaScript error or showed one."""
    opened = open_page(browser, server)
    yield opened
    errors = list(opened.errors)
    message = opened.inner_text("#message-text")
    opened.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    assert "unexpected error" not in message, message


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder
