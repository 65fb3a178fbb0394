"""``samdeploy batch`` throughput: the local process pool against Ray Data, at 1 and 2 workers.

Segments the same generated images (everything mode) once per configuration, each into a fresh
output folder, and reports per configuration:

- wall: the whole run, start-up included (worker processes or Ray, model loads, the merge);
- images/s from the first result to the last (start-up excluded; Ray hands results back in
  bursts, so this needs many images to mean much);
- worker seconds per image (measured inside the workers), so images/s per worker: the per-actor
  rate a cluster multiplies;
- driver CPU per image between the first and last result: what the driver itself spends (reading
  results, writing files, Ray's client side), the cost that does not shrink as workers are added.

    .venv/bin/python benchmarks/bench_batch.py                       # default model, 24 images
    .venv/bin/python benchmarks/bench_batch.py --images 48 --points-per-side 16 --configs local:1,ray:2

``--everything-package PKG --everything-checkpoint PTH`` also runs ``bench_everything.py`` (vit_b
random weights against the official generator, per image; ``--everything-preload`` to give both
sides tcmalloc, the official one's best set-up) and folds its result into the output.
Results go to ``benchmarks/results/batch.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_images(folder: Path, count: int, height: int, width: int) -> None:
    """``count`` PNGs of flat-coloured discs and bars on a gradient (objects for a trained model)."""
    yy, xx = np.mgrid[:height, :width]
    for index in range(count):
        rng = np.random.default_rng(index)
        image = np.stack([xx * 200 // width, yy * 200 // height, np.full_like(xx, 60)], -1).astype(np.uint8)
        for k in range(12):
            cy, cx = rng.integers(0, height), rng.integers(0, width)
            r = rng.integers(8, min(height, width) // 4)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            image[disc if k % 2 else (abs(yy - cy) < r) & (abs(xx - cx) < r // 2 + 2)] = rng.integers(
                0, 256, 3
            )
        Image.fromarray(image).save(folder / f"image{index:04d}.png")


def measure(images: Path, out: Path, kind: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run of one configuration."""
    from samdeploy.batch import RunnerOptions, run_batch

    stamps: list[tuple[float, float]] = []  # (wall, driver CPU) at each result
    worker_seconds: list[float] = []

    def seen(outcome: Any) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        worker_seconds.append(outcome.seconds)

    runner = RunnerOptions(workers=workers, ray=kind == "ray", threads=args.threads)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = run_batch(
        images,
        out,
        model=args.model,
        generator={"points_per_side": args.points_per_side},
        runner=runner,
        on_outcome=seen,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    (first, cpu_first), (last, cpu_last) = stamps[0], stamps[-1]
    steady = (len(stamps) - 1) / (last - first) if last > first else float("nan")
    per_image = float(np.mean(worker_seconds))
    return {
        "runner": kind,
        "workers": workers,
        "images": summary.done,
        "failed": summary.failed,
        "wall_s": round(wall, 2),
        "images_per_s_overall": round(summary.done / wall, 3),
        "images_per_s_first_to_last_result": round(steady, 3),
        "worker_s_per_image": round(per_image, 4),
        "images_per_s_per_worker": round(1 / per_image, 3),
        "first_result_after_s": round(first - wall0, 2),
        "driver_cpu_s_total": round(cpu, 2),
        "driver_cpu_ms_per_image_steady": round(1000 * (cpu_last - cpu_first) / max(len(stamps) - 1, 1), 2),
    }


def scaling(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughput on N nodes of A actors each: min(N * A * per-actor rate, 1 / driver time per
    image), from the Ray row with the most workers."""
    ray_rows = [r for r in rows if r["runner"] == "ray"] or rows
    row = max(ray_rows, key=lambda r: r["workers"])
    per_actor = row["images_per_s_per_worker"]
    driver_s = row["driver_cpu_ms_per_image_steady"] / 1000
    ceiling = 1 / driver_s if driver_s > 0 else float("inf")
    return {
        "per_actor_images_per_s": per_actor,
        "driver_s_per_image": round(driver_s, 5),
        "driver_ceiling_images_per_s": round(ceiling, 1),
        "actors_until_driver_bound": int(ceiling // per_actor) if per_actor > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--model", type=Path, help="model package (default: the embedded one)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per worker")
    parser.add_argument("--configs", default="local:1,local:2,ray:1,ray:2", help="RUNNER:WORKERS,...")
    parser.add_argument("--everything-package", type=Path, help="vit_b random package for bench_everything")
    parser.add_argument("--everything-checkpoint", type=Path, help="its checkpoint")
    parser.add_argument("--everything-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--everything-preload", help="a malloc to LD_PRELOAD for both generators (libtcmalloc_minimal.so.4)"
    )
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "batch.json")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as temp:
        images = Path(temp) / "images"
        images.mkdir()
        write_images(images, args.images, args.height, args.width)
        for number, config in enumerate(args.configs.split(",")):
            kind, workers = config.split(":")
            row = measure(images, Path(temp) / f"out{number}", kind, int(workers), args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "images": f"{args.images} x {args.width}x{args.height}",
        "points_per_side": args.points_per_side,
        "model": str(args.model or "embedded default"),
        "threads_per_worker": args.threads,
        "runs": rows,
        "scaling": scaling(rows),
    }
    if args.everything_package is not None:
        everything = Path(tempfile.mkdtemp()) / "everything.json"
        command = [
            sys.executable, str(ROOT / "benchmarks" / "bench_everything.py"),
            "--package", str(args.everything_package), "--checkpoint", str(args.everything_checkpoint),
            "--threads", str(args.everything_threads), "--output", str(everything),
        ]  # fmt: skip
        env = dict(os.environ)
        if args.everything_preload:
            env["LD_PRELOAD"] = args.everything_preload
        subprocess.run(command, check=True, env=env)
        result["everything_vit_b"] = json.loads(everything.read_text())
        result["everything_vit_b"]["preload"] = args.everything_preload
    print(json.dumps(result["scaling"]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
