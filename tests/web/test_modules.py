"""The page's pure JavaScript helpers, run in the browser against Python's reference libraries:
RLE decoding (pycocotools), PNG and ZIP writing (Pillow, zipfile), polygon tracing, geometry."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
from pycocotools import mask as mask_utils


@pytest.fixture
def js(page):
    """Call ``module.function(*args)`` in the page; typed arrays come back as base64 bytes."""

    def call(module: str, function: str, *args):
        return page.evaluate(
            """async ([module, fn, args]) => {
                const m = await import(`/app/${module}.js`);
                const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
                const decoded = args.map((a) => (a && a.b64 !== undefined ? fromB64(a.b64) : a));
                let result = await m[fn](...decoded);
                if (result instanceof Blob) result = new Uint8Array(await result.arrayBuffer());
                if (ArrayBuffer.isView(result)) {
                    const bytes = new Uint8Array(result.buffer, result.byteOffset, result.byteLength);
                    let text = '';
                    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
                    return {b64: btoa(text)};
                }
                return result;
            }""",
            [module, function, list(args)],
        )

    return call


def b64(array: np.ndarray) -> dict:
    return {"b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()}


def unb64(value: dict) -> bytes:
    return base64.b64decode(value["b64"])


def random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((6, 3), bool), rng.random((1, 1)) < 2]
    for height, width in [(13, 17), (64, 48), (97, 130)]:
        blocks = rng.random((height // 4 + 1, width // 4 + 1)) < 0.4
        masks.append(
            np.kron(blocks, np.ones((4, 4), bool))[:height, :width] ^ (rng.random((height, width)) < 0.05)
        )
    return masks


def test_rle_decoding_matches_pycocotools(js) -> None:
    for mask in random_masks():
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = {"size": rle["size"], "counts": rle["counts"].decode()}
        decoded = np.frombuffer(unb64(js("rle", "decodeRle", rle)), np.uint8).reshape(mask.shape)
        assert np.array_equal(decoded, mask)


def test_rle_long_runs(js) -> None:
    # Runs of tens of millions of pixels (a large image's background) take six 5-bit groups each.
    counts = [40_000_000, 3, 123_456_789, 1, 5]
    size = [sum(counts), 1]
    compressed = mask_utils.frPyObjects({"size": size, "counts": counts}, *size)
    assert js("rle", "decodeCounts", compressed["counts"].decode()) == counts


def test_corrupt_rle_is_an_error_not_a_wrong_mask(page) -> None:
    message = page.evaluate(
        """async () => {
            const {decodeRle} = await import('/app/rle.js');
            try { decodeRle({size: [4, 4], counts: '3'}); return 'no error'; } catch (e) { return e.message; }
        }"""
    )
    assert "shorter than its size" in message


def test_grayscale_png_8_and_16_bit(js, page) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (21, 34), dtype=np.uint8)
    png = Image.open(io.BytesIO(unb64(js("files", "grayscalePng", b64(pixels), 34, 21))))
    assert png.mode == "L" and np.array_equal(np.asarray(png), pixels)
    wide = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    blob = page.evaluate(
        """async (values) => {
            const {grayscalePng} = await import('/app/files.js');
            const bytes = new Uint8Array(await (await grayscalePng(Uint16Array.from(values), 11, 9)).arrayBuffer());
            return Array.from(bytes);
        }""",
        wide.ravel().tolist(),
    )
    png16 = Image.open(io.BytesIO(bytes(blob)))
    assert png16.mode.startswith("I") and np.array_equal(np.asarray(png16).astype(np.uint16), wide)


def test_zip_archive_reads_back(page) -> None:
    blob = page.evaluate(
        """async () => {
            const {zipArchive} = await import('/app/files.js');
            const enc = new TextEncoder();
            const zip = zipArchive([{name: 'a.txt', data: enc.encode('hello')}, {name: 'masks/étoile.png', data: new Uint8Array([0, 1, 2])}]);
            return Array.from(new Uint8Array(await zip.arrayBuffer()));
        }"""
    )
    archive = zipfile.ZipFile(io.BytesIO(bytes(blob)))
    assert archive.testzip() is None
    assert archive.namelist() == ["a.txt", "masks/étoile.png"]
    assert archive.read("a.txt") == b"hello" and archive.read("masks/étoile.png") == b"\x00\x01\x02"


def crossings(polygon: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxW: how many of the polygon's edges a ray from each pixel centre towards +x crosses."""
    px, py = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    count = np.zeros((height, width), int)
    for (x1, y1), (x2, y2) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        spans = (y1 > py) != (y2 > py)
        count += spans & (px < x1 + (py - y1) * (x2 - x1) / (y2 - y1))
    return count


def test_polygons_rasterize_back_to_the_mask(js) -> None:
    for mask in random_masks()[3:]:
        height, width = mask.shape
        rings = js("masks", "maskPolygons", b64(mask.astype(np.uint8)), width, height, 0)
        # Outer rings minus holes give the mask back exactly (tolerance 0: every pixel corner kept),
        # filled even-odd at pixel centres (never on an edge: vertices are on integer corners).
        inside = np.zeros((height, width), int)
        for ring in rings["outer"] + rings["holes"]:
            inside += crossings(np.array(ring, float).reshape(-1, 2), width, height)
        assert np.array_equal(inside % 2 == 1, mask)


def test_polygon_orientation_and_diagonal_pixels(js) -> None:
    ring = np.zeros((6, 6), np.uint8)
    ring[1:5, 1:5] = 1
    ring[2:4, 2:4] = 0
    result = js("masks", "maskPolygons", b64(ring), 6, 6, 0)
    assert result["outer"] == [[1, 1, 5, 1, 5, 5, 1, 5]]  # clockwise on screen, pixel corners
    assert len(result["holes"]) == 1 and sorted(result["holes"][0]) == sorted([2, 2, 2, 4, 4, 4, 4, 2])
    diagonal = np.array([[1, 0], [0, 1]], np.uint8)  # touching at a corner: two pieces
    assert len(js("masks", "maskPolygons", b64(diagonal), 2, 2, 0)["outer"]) == 2


def test_geometry(js) -> None:
    rect = {"left": 10, "top": 20, "width": 320, "height": 240}
    image = {"width": 640, "height": 480}
    assert js("geometry", "clientToImage", rect, image, 10 + 193.9, 20 + 120.6) == [387, 241]
    assert js("geometry", "clientToImage", rect, image, 0, 1000) == [0, 479]  # clamped
    assert js("geometry", "cornersToBox", [50, 9], [3, 40]) == [3, 9, 50, 40]
    one_point = {"points": [[1, 2]], "labels": [1], "box": None}
    assert js("geometry", "segmentRequest", one_point) == {
        "points": [[1, 2]],
        "labels": [1],
        "box": None,
        "multimask": True,
        "format": "rle",
    }
    box_only = {"points": [], "labels": [], "box": [0, 0, 5, 5]}
    assert js("geometry", "segmentRequest", box_only)["multimask"] is False
    assert js("geometry", "segmentRequest", box_only)["points"] is None
