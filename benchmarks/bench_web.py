"""Click-to-mask time of the web page: the real ``samdeploy serve`` on loopback, the page in headless
Chromium, the time from a click's button-up to the first frame that shows its mask (the page measures
it itself and shows it in its status bar).

For each model: upload ``examples/shapes.png``, then ``--clicks`` (default 50) clicks, each on a
cleared prompt and a new pixel (no answer can come from the page's memory), and report p50 / p90 /
mean. The pointer moves to each point just before its click, as a hand does, so the hover preview may
already have asked the server for that point: this is what a user sees. Writes
``benchmarks/results/web.json``.

    .venv/bin/python benchmarks/bench_web.py                              # embedded model and vit_b
    .venv/bin/python benchmarks/bench_web.py --models embedded --clicks 10  # smoke run
    .venv/bin/python benchmarks/bench_web.py --models embedded --clicks 0 --screenshot docs/web-screenshot.png
    .venv/bin/python benchmarks/bench_web.py --solo-threads 1 0 --rounds 2   # lone clicks on 1 core / all

vit_b is a random-weight model of the official vit_b size, exported once into ``--vit-b-dir``
(minutes; needs the ``export`` extra); its masks mean nothing, its times are a real vit_b's.
Needs Chromium at /usr/bin/chromium and Playwright for Python (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "web"))

from bench_everything import random_model  # noqa: E402
from bench_serve import cpu_name, metric_values  # noqa: E402
from pagedriver import (  # noqa: E402
    chromium,
    click_latencies,
    click_pixel,
    missing_browser,
    open_image,
    open_page,
    serve_process,
)

EXAMPLE = ROOT / "examples" / "shapes.png"
RESULTS = ROOT / "benchmarks" / "results" / "web.json"


def click_points(count: int, width: int = 640, height: int = 480) -> list[tuple[int, int]]:
    """``count`` distinct pixels spread over the image."""
    points = [(20 + (i * 53) % (width - 40), 20 + (i * 37) % (height - 40)) for i in range(count)]
    assert len(set(points)) == count, "choose fewer clicks: the spread repeats"
    return points


def server_counts(url: str) -> dict[str, float]:
    """The server's decoder calls and the segment requests it answered alone (``--solo-threads``)."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    names = {"samdeploy_decode_seconds_count": "decoder_calls", "samdeploy_segments_alone_total": "alone"}
    return {names[name]: value for name, value in metric_values(text, tuple(names)).items() if name in names}


def measure(
    browser, model: Path | None, clicks: int, server_args: list[str]
) -> tuple[float, list[float], dict[str, float]]:
    """One server with ``server_args``: the upload's time (s), ``clicks`` click-to-mask times (ms)
    and the server's counts (:func:`server_counts`)."""
    with serve_process(model, *server_args, ready_timeout=600) as url:
        page = open_page(browser, url)
        page.set_default_timeout(600_000)  # a vit_b encode on a busy small machine takes a while
        start = time.perf_counter()
        open_image(page, EXAMPLE)
        upload_s = time.perf_counter() - start
        click_latencies(page, click_points(3))  # warm-up: first decoder runs, first paints
        page.keyboard.press("Escape")
        before = server_counts(url)
        times = click_latencies(page, click_points(clicks + 3)[3:])
        after = server_counts(url)
        page.context.close()
    return upload_s, times, {k: after[k] - before.get(k, 0.0) for k in after}


def summary(uploads: list[float], times: list[float], counts: dict[str, float]) -> dict[str, Any]:
    return {
        **{k: int(v) for k, v in counts.items()},
        "clicks": len(times),
        "upload_and_embedding_s": round(statistics.median(uploads), 2),
        "p50_ms": round(statistics.median(times), 1),
        "p90_ms": round(statistics.quantiles(times, n=10)[-1], 1),
        "mean_ms": round(statistics.fmean(times), 1),
        "min_ms": round(min(times), 1),
        "max_ms": round(max(times), 1),
    }


def screenshot(browser, target: Path) -> None:
    """The page with two kept objects and a click's three candidates, saved as a small palette PNG."""
    from PIL import Image

    with serve_process(None) as url:
        page = open_page(browser, url)
        page.set_viewport_size({"width": 1200, "height": 660})
        open_image(page, EXAMPLE)
        for label, point in (("blob", (387, 241)), ("star", (535, 178))):
            page.fill("#label", label)
            click_pixel(page, *point)
            page.click("#new-object")
        page.fill("#label", "bar")
        click_pixel(page, 79, 242)
        page.mouse.move(5, 5)
        raw = target.with_suffix(".raw.png")
        page.screenshot(path=str(raw))
        page.context.close()
    shot = Image.open(raw).convert("RGB")
    shot = shot.resize((960, round(shot.height * 960 / shot.width)), Image.Resampling.LANCZOS)
    shot.quantize(colors=64).save(target, optimize=True)
    raw.unlink()
    print(f"screenshot: {target} ({target.stat().st_size // 1024} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=["embedded", "vit_b"], default=["embedded", "vit_b"])
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the server's models")
    parser.add_argument(
        "--solo-threads",
        type=int,
        nargs="+",
        default=None,
        help="the server's --solo-threads; several values are measured in turn, --rounds times each",
    )
    parser.add_argument("--rounds", type=int, default=1, help="servers started per setting, alternating")
    parser.add_argument("--vit-b-dir", type=Path, default=ROOT / "models" / "random_vit_b")
    parser.add_argument(
        "--screenshot", type=Path, default=None, help="also save a screenshot of the page here"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    missing = missing_browser()
    if missing:
        sys.exit(f"error: {missing}")

    results: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "models": {},
    }
    with chromium() as browser:
        results["browser"] = f"Chromium {browser.version}"
        if args.screenshot:
            screenshot(browser, args.screenshot)
        if args.clicks:
            for name in args.models:
                package = None
                if name == "vit_b":
                    package = args.vit_b_dir / "package"
                    if not (package / "model.json").exists():
                        args.vit_b_dir.mkdir(parents=True, exist_ok=True)
                        print(f"exporting a random-weight vit_b into {args.vit_b_dir} (minutes)")
                        random_model("vit_b", args.vit_b_dir)
                settings = [None] if args.solo_threads is None else args.solo_threads
                measured: dict[int | None, tuple[list[float], list[float], Counter[str]]] = {
                    s: ([], [], Counter()) for s in settings
                }
                for _ in range(args.rounds):
                    for solo in settings:
                        extra = ["--threads", str(args.threads)] if args.threads else []
                        extra += [] if solo is None else ["--solo-threads", str(solo)]
                        upload_s, times, counts = measure(browser, package, args.clicks, extra)
                        measured[solo][0].append(upload_s)
                        measured[solo][1].extend(times)
                        measured[solo][2].update(counts)
                for solo, (uploads, times, counts) in measured.items():
                    key = name if len(settings) == 1 else f"{name}, --solo-threads {solo}"
                    results["models"][key] = summary(uploads, times, counts)
                    print(key, json.dumps(results["models"][key]))
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    if args.clicks:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
