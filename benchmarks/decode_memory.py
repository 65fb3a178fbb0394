"""Peak memory of decoding one image file with ``samdeploy.sam.images.load_image``.

    python benchmarks/decode_memory.py                      # the table of docs/security.md
    python benchmarks/decode_memory.py --megapixels 20 --modes 1 RGB

Each case writes a synthetic image of the given mode and size in one process, then decodes it in
a fresh one and reports the growth of the process's peak resident memory (``ru_maxrss``) during
the decode, in bytes per pixel. The decoded result itself (3 bytes per pixel) is included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = r"""
import sys
import numpy as np
from PIL import Image

mode, width, height, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if mode == "1":
    image = Image.new("1", (width, height)); image.paste(1, (0, 0, width // 2, height))
elif mode == "I;16":
    image = Image.fromarray((np.arange(width, dtype=np.uint16) * 7)[None].repeat(height, 0))
else:
    image = Image.new(mode, (width, height), "white" if mode != "F" else 1.0)
image.save(path)
"""

# A fresh process that only decodes, so no earlier allocation hides the decode's peak.
DECODE = r"""
import json, resource, sys
from samdeploy.sam.images import load_image

path, pixels = sys.argv[1], int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
rgb = load_image(path, max_pixels=0)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"pixels": pixels, "peak_growth": after - before}))
"""

SUFFIX = {
    "1": ".png",
    "L": ".png",
    "RGB": ".png",
    "RGBA": ".png",
    "CMYK": ".tiff",
    "I;16": ".png",
    "F": ".tiff",
}


def measure(mode: str, megapixels: float) -> dict:
    width = 5000
    height = max(1, int(megapixels * 1e6 / width))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"image{SUFFIX[mode]}"
        subprocess.run([sys.executable, "-c", WRITE, mode, str(width), str(height), str(path)], check=True)
        out = subprocess.run(
            [sys.executable, "-c", DECODE, str(path), str(width * height)],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, nargs="+", default=[25.0, 100.0])
    parser.add_argument("--modes", nargs="+", default=["1", "L", "RGB", "RGBA", "I;16"])
    args = parser.parse_args()
    print(f"{'mode':6} {'MP':>6} {'peak growth MB':>15} {'bytes/pixel':>12}")
    for megapixels in args.megapixels:
        for mode in args.modes:
            result = measure(mode, megapixels)
            per_pixel = result["peak_growth"] / result["pixels"]
            print(
                f"{mode:6} {result['pixels'] / 1e6:6.1f} {result['peak_growth'] / 2**20:15.1f} {per_pixel:12.2f}"
            )


if __name__ == "__main__":
    main()
