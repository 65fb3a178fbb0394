"""Load test of ``samdeploy serve``: the real server on loopback, many concurrent asyncio clients.

Three phases, one after the other, each bounded in time:

1. **mixed** (``--duration`` s, default 60): ``--clients`` (default 50) clients loop; each turn a
   client either uploads a new image (probability ``--new-share``) and clicks on it, or clicks on
   one of ``--cached`` images uploaded before the run. A 503 waits its Retry-After; an evicted image
   (404) is uploaded again. The server's RSS is sampled all along.
2. **clicks** (``--clicks-duration`` s): the same clients, clicks on cached images only.
3. **in-process**: ``SamPredictor.predict`` on the same model, from ``--clients`` threads at once
   (the server stopped), for ``--clicks-duration`` s: the reference for the click latency.

Prints throughput, p50/p95/p99 per route, errors by status and RSS, and writes them to
``benchmarks/results/serve.json``. The client runs on the same machine as the server and takes
CPU from it: on a small machine, read the figures as a lower bound of what the server does alone.

    .venv/bin/python benchmarks/bench_serve.py                         # embedded default model
    .venv/bin/python benchmarks/bench_serve.py --duration 10 --clients 8 --clicks-duration 5   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_everything import cpu_name, picture  # picture: flat-coloured discs on a gradient
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "serve.json"


class Uploads:
    """Distinct image files, cheaply: one BMP whose first pixel bytes carry a counter."""

    def __init__(self, height: int, width: int, seed: int) -> None:
        buffer = io.BytesIO()
        Image.fromarray(picture(height, width, seed)).save(buffer, format="BMP")
        self.base = buffer.getvalue()
        self.offset = int.from_bytes(self.base[10:14], "little")  # start of the pixel array
        self.count = 0
        self.size = (height, width)

    def next(self) -> bytes:
        self.count += 1
        data = bytearray(self.base)
        data[self.offset : self.offset + 4] = self.count.to_bytes(4, "little")
        return bytes(data)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ms = np.asarray(values) * 1000
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.transport_errors = 0

    def record(self, route: str, status: int, seconds: float) -> None:
        self.status[route][status] += 1
        if status == 200:
            self.latency[route].append(seconds)

    def summary(self, duration: float) -> dict[str, Any]:
        ok = sum(len(v) for v in self.latency.values())
        return {
            "duration_s": round(duration, 1),
            "requests_ok_per_s": round(ok / duration, 1),
            "routes": {route: percentiles(values) for route, values in self.latency.items()},
            "status": {route: dict(sorted(codes.items())) for route, codes in self.status.items()},
            "errors_other_than_503": sum(
                n for codes in self.status.values() for code, n in codes.items() if code not in (200, 503)
            )
            + self.transport_errors,
            "transport_errors": self.transport_errors,
        }


async def timed(stats: Stats, route: str, call) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        response = await call
    except httpx.TransportError:
        stats.transport_errors += 1
        return None
    stats.record(route, response.status_code, time.perf_counter() - start)
    return response


async def upload(http: httpx.AsyncClient, stats: Stats, data: bytes) -> str | None:
    while True:
        response = await timed(stats, "upload", http.post("/v1/images", content=data))
        if response is None:
            return None
        if response.status_code == 503:
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        return response.json()["image_id"] if response.status_code == 200 else None


async def click(
    http: httpx.AsyncClient, stats: Stats, image_id: str, size: tuple[int, int], rng: random.Random
) -> int | None:
    height, width = size
    points = [[rng.uniform(0, width - 1), rng.uniform(0, height - 1)] for _ in range(rng.randint(1, 2))]
    body = {"points": points, "labels": [1] * len(points)}
    response = await timed(stats, "segment", http.post(f"/v1/images/{image_id}/segment", json=body))
    return None if response is None else response.status_code


async def client_loop(
    index: int,
    http: httpx.AsyncClient,
    stats: Stats,
    cached: list[tuple[str, bytes]],
    uploads: Uploads,
    new_share: float,
    stop: float,
) -> None:
    rng = random.Random(index)
    while time.monotonic() < stop:
        if rng.random() < new_share:
            image_id = await upload(http, stats, uploads.next())
            if image_id is not None:
                await click(http, stats, image_id, uploads.size, rng)
            continue
        slot = rng.randrange(len(cached))
        image_id, data = cached[slot]
        evicted = await click(http, stats, image_id, uploads.size, rng) == 404
        if evicted and (new_id := await upload(http, stats, data)) is not None:  # upload it again
            cached[slot] = (new_id, data)


async def run_phase(
    base: str, args: argparse.Namespace, cached, uploads, new_share: float, duration: float, pid: int
):
    stats = Stats()
    rss: list[float] = []
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        stop = time.monotonic() + duration
        start = time.perf_counter()

        async def sample() -> None:
            while time.monotonic() < stop:
                if (value := rss_mb(pid)) is not None:
                    rss.append(value)
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(
            *(client_loop(i, http, stats, cached, uploads, new_share, stop) for i in range(args.clients))
        )
        elapsed = time.perf_counter() - start
        await sampler
    summary = stats.summary(elapsed)
    if rss:
        summary["server_rss_mb"] = {"start": round(rss[0]), "max": round(max(rss)), "end": round(rss[-1])}
    return summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(base: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready")


def metric_values(text: str, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The samples of a Prometheus text exposition whose names start with one of ``prefixes``."""
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(prefixes):
            values[name] = float(value)
    return values


def in_process(args: argparse.Namespace, image: np.ndarray, duration: float) -> dict[str, Any]:
    """``SamPredictor.predict`` latency from ``--clients`` threads at once on one model."""
    from threadpoolctl import threadpool_limits

    from samdeploy import SamPredictor, load_model

    threadpool_limits(limits=1, user_api="blas")  # as the server runs (see samdeploy.serve.app)
    from samdeploy.serve.settings import ServeSettings

    solo = ServeSettings(threads=args.threads, solo_threads=args.solo_threads).decoder_solo_threads
    model = load_model(args.model, threads=args.threads or None, solo_threads=solo, cache_mb=0)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    height, width = image.shape[:2]
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker(index: int) -> None:
        rng = random.Random(index)
        while time.monotonic() < stop:
            n = rng.randint(1, 2)
            points = np.array([[rng.uniform(0, width - 1), rng.uniform(0, height - 1)] for _ in range(n)])
            start = time.perf_counter()
            predictor.predict(point_coords=points, point_labels=np.ones(n))
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(worker, range(args.clients)))
    elapsed = time.perf_counter() - start
    model.close()
    return {
        "duration_s": round(elapsed, 1),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        **percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="package folder (default: embedded)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the mixed phase")
    parser.add_argument(
        "--clicks-duration", type=float, default=20.0, help="seconds of each click-only phase"
    )
    parser.add_argument("--new-share", type=float, default=0.1, help="share of turns that upload a new image")
    parser.add_argument("--cached", type=int, default=20, help="images uploaded before the run")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--cache-mb", type=float, default=256.0)
    parser.add_argument("--workers", type=int, default=1, help="the server's encoder threads")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads per model call (0: all cores)"
    )
    parser.add_argument(
        "--solo-threads",
        type=int,
        default=0,
        help="intra-op threads of a decoder call that runs alone (0: all cores; --threads: off)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "samdeploy", "serve", "--port", str(port), "--log-level", "warning"]
    command += ["--cache-mb", str(args.cache_mb), "--workers", str(args.workers)]
    if args.model is not None:
        command += ["--model", str(args.model)]
    command += ["--threads", str(args.threads), "--solo-threads", str(args.solo_threads)]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(command, env=env)
    uploads = Uploads(*args.size, seed=0)
    result: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    try:
        wait_ready(base, process)
        result["server_rss_mb_ready"] = round(rss_mb(process.pid) or 0)
        cached: list[tuple[str, bytes]] = []

        async def preload() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=300) as http:
                for _ in range(args.cached):
                    data = uploads.next()
                    image_id = await upload(http, Stats(), data)
                    assert image_id is not None, "preloading failed"
                    cached.append((image_id, data))

        asyncio.run(preload())
        print(f"mixed phase: {args.clients} clients for {args.duration:g} s", flush=True)
        result["mixed"] = asyncio.run(
            run_phase(base, args, cached, uploads, args.new_share, args.duration, process.pid)
        )
        print(f"click phase: {args.clients} clients for {args.clicks_duration:g} s", flush=True)
        result["clicks"] = asyncio.run(
            run_phase(base, args, cached, uploads, 0.0, args.clicks_duration, process.pid)
        )
        result["server_metrics"] = metric_values(
            httpx.get(f"{base}/metrics").text,
            (
                "samdeploy_cache_",
                "samdeploy_encode_seconds_count",
                "samdeploy_encode_seconds_sum",
                "samdeploy_decode_seconds_count",
                "samdeploy_segments_alone_total",
            ),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        result["server_exit_code"] = process.wait(timeout=120)
    print(f"in-process predict: {args.clients} threads for {args.clicks_duration:g} s", flush=True)
    result["in_process_predict"] = in_process(args, picture(*args.size, seed=0), args.clicks_duration)
    result["load_average_after"] = os.getloadavg()
    click_p50 = result["clicks"]["routes"].get("segment", {}).get("p50_ms")
    if click_p50:
        result["click_p50_over_in_process_p50"] = round(click_p50 / result["in_process_predict"]["p50_ms"], 2)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
