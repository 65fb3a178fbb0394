"""Mask upscaling of a click, the ways the library offers, alternating call by call.

A one-point predict upscales its three low-res masks (256x256 logits) to the picture's size.
``postprocess_masks(low_res, geometry)`` returns the float logits at full size, which the caller
thresholds; ``postprocess_masks(low_res, geometry, above=0.0)`` returns the bool masks a piece at a
time, never holding the full-size logits (what ``SamPredictor.predict`` does unless
``return_logits``). Where OpenCV samples at PyTorch's positions (a picture whose long side is 1024
or a power of two times it) both forms resize with ``cv2.resize``, and a third form times the
banded products the other sizes take (``products=True``). Prints, per picture size, the way taken,
each form's median time, the median of per-call ratios and the peak of memory numpy allocated
(tracemalloc); the forms' masks are checked equal (to 1e-5 of the logits across the two ways). No
model needed.

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

from samdeploy.sam.transforms import MaskGeometry

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
    """Per ``HxW``: ``way`` ("opencv" or "products"), ``logits_ms`` (full-size logits, then
    ``> 0``), ``masks_ms`` (``above=0``), the median per-call ratio ``logits_over_masks``, each
    form's ``*_peak_mb``; where the way is OpenCV, also ``products_ms`` (the banded products,
    ``above=0``) and ``products_over_masks``."""
    low_res = _low_res(masks)
    report = {}
    for height, width in sizes:
        resize = MaskGeometry.for_image((height, width), 1024, (256, 256)).resize()
        forms = {
            "logits": lambda r=resize: r(low_res) > np.float32(0.0),
            "masks": lambda r=resize: r(low_res, 0.0),
        }
        if resize.in_opencv:
            forms["products"] = lambda r=resize: r(low_res, 0.0, products=True)
        expected = forms["masks"]()
        if not np.array_equal(forms["logits"](), expected):
            raise AssertionError(f"{height}x{width}: the float and bool forms gave different masks")
        if resize.in_opencv:
            gap = float(np.abs(resize(low_res) - resize(low_res, products=True)).max())
            if gap > 1e-5:
                raise AssertionError(f"{height}x{width}: OpenCV and the products differ by {gap:.2e}")
        times: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(rounds):
            for name, form in forms.items():
                start = time.perf_counter()
                form()
                times[name].append((time.perf_counter() - start) * 1e3)
        row = {"way": "opencv" if resize.in_opencv else "products"}
        for name in forms:
            row[f"{name}_ms"] = statistics.median(times[name])
            row[f"{name}_peak_mb"] = _peak_bytes(forms[name]) / 2**20
            if name != "masks":
                row[f"{name}_over_masks"] = statistics.median(
                    a / b for a, b in zip(times[name], times["masks"], strict=True)
                )
        report[f"{height}x{width}"] = row
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
        line = (
            f"{size} ({row['way']}): logits then threshold {row['logits_ms']:.1f} ms"
            f" ({row['logits_peak_mb']:.0f} MB), masks {row['masks_ms']:.1f} ms"
            f" ({row['masks_peak_mb']:.0f} MB), {row['logits_over_masks']:.2f}x"
        )
        if "products_ms" in row:
            line += f"; the products {row['products_ms']:.1f} ms, {row['products_over_masks']:.2f}x"
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
