"""samdeploy's SAM 2.1 package against the official PyTorch ``SAM2ImagePredictor``, side by side.

Both sides get the same random weights (an official config, seeded), the same image and the same
prompt on the same threads; the calls alternate (official, samdeploy, official, ...) so the ratio
holds on a noisy shared machine. Measures the encoder (``set_image``) and a one-point ``predict``.
The result goes to ``benchmarks/results/<model>.json`` and a markdown table on stdout.

    .venv/bin/python benchmarks/bench_sam2.py --size tiny --threads 2
    .venv/bin/python benchmarks/bench_sam2.py --size tiny --package models/sam2.1_tiny --checkpoint sam2.1_hiera_tiny.pt

Needs the official ``sam2`` (see docs/sam2.md) for the reference side and the export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"tiny": "sam2.1_hiera_t.yaml", "small": "sam2.1_hiera_s.yaml", "base_plus": "sam2.1_hiera_b+.yaml"}


def bench_image(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xx * 0.3) % 255, (yy * 0.5) % 255, ((xx + yy) * 0.2) % 255], axis=-1)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def alternate(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, dict[str, float]]:
    """Median and min milliseconds of each call, run round-robin ``repeat`` times after a warm-up."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint (default: seeded random weights)")
    parser.add_argument("--package", type=Path, help="its exported package (default: exported here)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    import samdeploy
    from samdeploy.export import export_model, load_state_dict
    from samdeploy.export.sam2 import (
        Sam2Config,
        load_sam2,
        official_config_path,
        official_predictor,
        random_sam2,
    )

    torch.set_num_threads(args.threads)
    config = Sam2Config.from_yaml(official_config_path(f"configs/sam2.1/{SIZES[args.size]}"))
    with tempfile.TemporaryDirectory(prefix="bench-sam2-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(tmp) / "checkpoint.pt"
            torch.save({"model": random_sam2(config, seed=0).state_dict()}, checkpoint)
        package = args.package or export_model(checkpoint, Path(tmp) / "package").output
        model = load_sam2(load_state_dict(checkpoint), config)
        official = official_predictor(model)
        ours = samdeploy.SAM2ImagePredictor(samdeploy.load_model(package, threads=args.threads, cache_mb=0))
        image = bench_image()
        point = dict(point_coords=np.array([[512, 384]]), point_labels=np.array([1]))
        with torch.inference_mode():
            encoder = alternate(
                {"official": lambda: official.set_image(image), "samdeploy": lambda: ours.set_image(image)},
                args.repeat,
            )
            predict = alternate(
                {"official": lambda: official.predict(**point), "samdeploy": lambda: ours.predict(**point)},
                args.repeat * 5,
            )
    report = {
        "model": f"sam2.1_hiera_{args.size}",
        "weights": args.checkpoint.name if args.checkpoint else "random (seed 0)",
        "image": list(image.shape),
        "threads": args.threads,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
        },
        "versions": {"torch": torch.__version__, "samdeploy": samdeploy.__version__},
        "encoder (set_image)": encoder,
        "predict: 1 point": predict,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{report['model']}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"| {report['model']}, {args.threads} threads | official PyTorch | samdeploy | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for step in ("encoder (set_image)", "predict: 1 point"):
        theirs, mine = report[step]["official"]["median_ms"], report[step]["samdeploy"]["median_ms"]
        print(f"| {step} | {theirs:.1f} ms | {mine:.1f} ms | {theirs / mine:.2f}x |")
    return report


if __name__ == "__main__":
    main()
