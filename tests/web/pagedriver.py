"""Drives the web page of ``samdeploy serve`` in headless Chromium, for the browser tests and
``benchmarks/bench_web.py``.

    with serve_process() as url, chromium() as browser:
        page = open_page(browser, url)
        open_image(page, "examples/shapes.png")
        click_pixel(page, 387, 241)          # waits until the mask is on screen

Chromium is Debian's (``/usr/bin/chromium``), not Playwright's own download; Playwright for Python
drives it through ``executable_path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SAMDEPLOY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright; its browser download is not used)"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve_process(model: Path | None = None, *extra: str, ready_timeout: float = 120.0) -> Iterator[str]:
    """Run ``python -m samdeploy serve`` on a free loopback port; yield its base URL; stop it after.

    The server's output goes to a log file in the system temp folder, quoted when it fails to start.
    """
    port = free_port()
    command = [sys.executable, "-m", "samdeploy", "serve", "--port", str(port), *extra]
    if model is not None:
        command += ["--model", str(model)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"samdeploy-serve-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"samdeploy serve exited with {process.returncode}:\n{log.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"samdeploy serve not ready after {ready_timeout} s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """Headless Chromium (a Playwright Browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str):
    """A fresh page (own context, downloads accepted) on the server's web page. JavaScript errors are
    collected in ``page.errors`` (a test fails on them)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(url + "/")
    page.wait_for_selector("#shortcuts dt")  # the modules have run
    return page


def open_image(page, path: Path | str) -> None:
    """Choose a file in the page's file picker and wait for its embedding."""
    page.set_input_files("#file", str(path))
    page.wait_for_selector('body[data-status="ready"]')


def page_position(page, x: float, y: float) -> tuple[float, float]:
    """Where the centre of image pixel (x, y) is in the page (CSS pixels), once the layout has settled."""
    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    rect = page.locator("#prompt-layer").bounding_box()
    width, height = page.evaluate(
        "[document.querySelector('#prompt-layer').width, document.querySelector('#prompt-layer').height]"
    )
    return rect["x"] + (x + 0.5) * rect["width"] / width, rect["y"] + (y + 0.5) * rect["height"] / height


def drawn_count(page) -> int:
    """How many clicks have had their mask drawn so far."""
    return int(page.get_attribute("#latency", "data-count") or 0)


def wait_drawn(page, before: int) -> float:
    """Wait until the mask of click number ``before + 1`` is on screen; its click-to-mask time in ms."""
    page.wait_for_function(f"Number(document.querySelector('#latency').dataset.count || 0) > {before}")
    return float(page.get_attribute("#latency", "data-ms"))


def click_pixel(page, x: int, y: int, negative: bool = False) -> float:
    """Click image pixel (x, y) (right click when ``negative``); wait for its mask; the latency in ms."""
    before = drawn_count(page)
    px, py = page_position(page, x, y)
    page.mouse.click(px, py, button="right" if negative else "left")
    return wait_drawn(page, before)


def drag_box(page, box: tuple[int, int, int, int]) -> float:
    """Drag from pixel (x0, y0) to (x1, y1); wait for the box's mask; the latency in ms."""
    before = drawn_count(page)
    x0, y0 = page_position(page, box[0], box[1])
    x1, y1 = page_position(page, box[2], box[3])
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()
    return wait_drawn(page, before)


def export(page, button: str, folder: Path) -> Path:
    """Click an export button (#export-coco, #export-png, #export-polygons); the saved download."""
    with page.expect_download() as info:
        page.click(button)
    download = info.value
    target = folder / download.suggested_filename
    download.save_as(target)
    return target


def click_latencies(page, points: list[tuple[int, int]]) -> list[float]:
    """Click each point on a cleared prompt (Escape between clicks); the click-to-mask times in ms."""
    times = []
    for x, y in points:
        page.keyboard.press("Escape")
        times.append(click_pixel(page, x, y))
    return times
