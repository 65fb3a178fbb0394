"""One-point predict on model packages, alternating call by call: the interactive click.

SAM and SAM 2.x packages alike (each gets its family's predictor).

Each package gets a ``SamPredictor`` on the same picture; after a warm-up, the packages answer the
same one-point prompt in turn, round after round, so a machine that changes speed during the run
(shared hosts do) slows every package alike. Prints each package's median and best time and, for
two or more packages, the median of the per-round ratios against the first. No PyTorch needed.

    .venv/bin/python benchmarks/bench_predict.py models/old-export models/new-export --rounds 40
    .venv/bin/python benchmarks/bench_predict.py models/sam_vit_b --json predict.json
    .venv/bin/python benchmarks/bench_predict.py models/sam_vit_b --image-size 3024x4032   # a phone photo
    .venv/bin/python benchmarks/bench_predict.py models/sam_vit_b --idle 0.5   # each click after half a second

``--idle SECONDS`` sleeps before every timed call (outside its time): a person's clicks come seconds
apart, and a click that follows an idle host finds its caches and cores cold, so it is slower than
one of a tight loop.

Alternating packages in one process makes each call find the other model's data in the caches, so
the times are above those of one package alone; the ratio is what this measures. Run one package
alone for its own time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from samdeploy import SAM2ImagePredictor, SamPredictor, load_model


def bench_predict(
    packages: list[str],
    rounds: int,
    warmup: int,
    threads: int,
    image_size: tuple[int, int] = (768, 1024),
    idle: float = 0.0,
) -> dict:
    """Per package: ``median_ms``, ``best_ms``, ``rounds``, ``idle_s`` and (from the second on) ``ratio_to_first``, the median
    of per-round time ratios (the first package's time / this one's). A package named again is
    reported again under its name with a ``'`` added. The picture is ``image_size`` (H, W) of noise,
    clicked near its centre: the masks come back at that size. ``idle``: seconds slept before each
    timed call."""
    height, width = image_size
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    prompt = {
        "point_coords": np.array([[width * 500 // 1024, height * 375 // 768]]),
        "point_labels": np.array([1]),
    }
    predictors = {}
    for package in packages:
        label = package
        while label in predictors:  # the same package twice (a noise check): its own entry
            label += "'"
        model = load_model(package, threads=threads)
        predictor = (SAM2ImagePredictor if model.package.is_sam2 else SamPredictor)(model)
        predictor.set_image(image)
        for _ in range(warmup):
            predictor.predict(**prompt)
        predictors[label] = predictor
    times: dict[str, list[float]] = {label: [] for label in predictors}
    for _ in range(rounds):
        for label, predictor in predictors.items():
            if idle:
                time.sleep(idle)
            start = time.perf_counter()
            predictor.predict(**prompt)
            times[label].append((time.perf_counter() - start) * 1e3)
    first = times[packages[0]]
    report = {}
    for label, values in times.items():
        row = {
            "median_ms": statistics.median(values),
            "best_ms": min(values),
            "rounds": len(values),
            "idle_s": idle,
        }
        if label != packages[0]:
            row["ratio_to_first"] = statistics.median(a / b for a, b in zip(first, values, strict=True))
        report[label] = row
    for predictor in predictors.values():
        predictor.model.close()
    return report


def picture_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` -> (height, width), both positive (an argparse type)."""
    try:
        height, width = (int(side) for side in text.lower().split("x"))
    except ValueError:
        height = width = 0
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"must be HEIGHTxWIDTH, e.g. 3024x4032 (got {text!r})")
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", help="model package folders")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--image-size",
        type=picture_size,
        default=(768, 1024),
        help="the picture's HEIGHTxWIDTH (default 768x1024)",
    )
    parser.add_argument(
        "--idle", type=float, default=0.0, help="seconds to sleep before each timed call (default 0)"
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or not args.idle >= 0:
        parser.error("--rounds must be at least 1, --warmup and --idle at least 0")
    report = bench_predict(args.packages, args.rounds, args.warmup, args.threads, args.image_size, args.idle)
    for package, row in report.items():
        ratio = f", {row['ratio_to_first']:.2f}x the first" if "ratio_to_first" in row else ""
        print(f"{package}: median {row['median_ms']:.1f} ms, best {row['best_ms']:.1f} ms{ratio}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
