"""Mask upscaling of a click, the two ways the library offers, alternating call by call.

A one-point predict upscales its three low-res masks (256x256 logits) to the picture's size.
``postprocess_masks(low_res, geometry)`` returns the float logits at full size, which the caller
thresholds; ``postprocess_masks(low_res, geometry, above=0.0)`` returns the bool masks a block of
rows at a time, never holding the full-size logits (what ``SamPredictor.predict`` does unless
``return_logits``). Both run the same products, so the masks are the same bits (checked here).
Prints, per picture size, each form's median time, the median of per-call ratios and the peak of
memory numpy allocated (tracemalloc). No model needed.

    .venv/bin/python benchmarks/bench_upscale.py
    .venv/bin/python benchmarks/bench_upscale.py --sizes 3024x4032 --rounds 40 --json upscale.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from samdeploy.sam.transforms import MaskGeometry, postprocess_masks

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: benchmarks/ is not a package on the path
    sys.path.insert(0, str(ROOT))
from benchmarks.bench_predict import picture_size  # noqa: E402

SIZES = ((768, 1024), (1536, 2048), (3024, 4032))


def _low_res(masks: int) -> np.ndarray:
    """Smooth logits like a real mask's: a blob with a noisy edge, one per mask, 1xCx256x256."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    blobs = [(40 + 15 * i - np.hypot(yy - 128, xx - 110 - 10 * i)) / 8 for i in range(masks)]
    return (np.stack(blobs)[None] + 0.3 * rng.standard_normal((1, masks, 256, 256))).astype(np.float32)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_upscale(sizes: list[tuple[int, int]], rounds: int, masks: int = 3) -> dict:
    """Per ``HxW``: ``logits_ms`` (full-size logits, then ``> 0``), ``masks_ms`` (``above=0``), the
    median per-call ratio ``logits_over_masks``, and each form's ``*_peak_mb``."""
    low_res = _low_res(masks)
    report = {}
    for height, width in sizes:
        geometry = MaskGeometry.for_image((height, width), 1024, (256, 256))
        forms = {
            "logits": lambda g=geometry: postprocess_masks(low_res, g) > np.float32(0.0),
            "masks": lambda g=geometry: postprocess_masks(low_res, g, 0.0),
        }
        if not np.array_equal(forms["logits"](), forms["masks"]()):
            raise AssertionError(f"{height}x{width}: the two forms gave different masks")
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(rounds):
            for name, form in forms.items():
                start = time.perf_counter()
                form()
                times[name].append((time.perf_counter() - start) * 1e3)
        report[f"{height}x{width}"] = {
            "logits_ms": statistics.median(times["logits"]),
            "masks_ms": statistics.median(times["masks"]),
            "logits_over_masks": statistics.median(
                a / b for a, b in zip(times["logits"], times["masks"], strict=True)
            ),
            "logits_peak_mb": _peak_bytes(forms["logits"]) / 2**20,
            "masks_peak_mb": _peak_bytes(forms["masks"]) / 2**20,
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", nargs="+", type=picture_size, default=list(SIZES), help="picture sizes, HEIGHTxWIDTH"
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    report = bench_upscale(args.sizes, args.rounds)
    for size, row in report.items():
        print(
            f"{size}: logits then threshold {row['logits_ms']:.1f} ms ({row['logits_peak_mb']:.0f} MB),"
            f" masks by blocks {row['masks_ms']:.1f} ms ({row['masks_peak_mb']:.0f} MB),"
            f" {row['logits_over_masks']:.2f}x"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
