"""The limits samdeploy puts on untrusted input: one place, each with its default and its reason.

Images, prompts, model packages and generator settings can come from anyone (a file on a shared
disk, an HTTP request). Each quantity whose cost grows without bound gets a limit here, and every
check that enforces one calls :func:`check`, so the command line, the Python API and the server
refuse the same things with the same one-line message. ``docs/security.md`` lists them with the
memory and time they bound.

Limits a caller may raise (``max_pixels``) take their default from here and are capped by a
hard ceiling; the others are fixed: a value over them is refused, never clamped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from samdeploy.errors import OptionError, SamDeployError


@dataclass(frozen=True)
class Limit:
    """One limit: its ``name`` (as messages show it), its ``value``, ``unit`` and why it exists."""

    name: str
    value: int
    unit: str
    reason: str


#: Width x height of an image file, checked from its header before any pixel is decoded.
MAX_PIXELS = Limit(
    "max_pixels",
    100_000_000,
    "pixels",
    "decompression bombs: decoding peaks at about 7 bytes per pixel (see docs/security.md)",
)
#: What ``max_pixels=None`` or ``0`` (and ``--max-pixels 0``) mean: the hard ceiling, never unbounded.
PIXELS_CEILING = Limit(
    "pixel ceiling",
    500_000_000,
    "pixels",
    "the largest image any setting admits: about 3.5 GB to decode",
)
#: Points (clicks) in one prompt: the decoder's token attention costs O(points^2).
MAX_POINTS = Limit("points per prompt", 256, "points", "token attention is quadratic in the points")
#: Prompts answered by one decoder call: boxes of a Bx4 batch, point sets of a BxNx2 batch.
MAX_PROMPTS = Limit("prompts per call", 256, "prompts", "each prompt adds a full decoder pass")
#: Points of all prompts of one decoder call together (B x N).
MAX_CALL_POINTS = Limit("points per call", 4096, "points", "cross-attention memory grows with B x N")
#: Mask pixels one decoder call returns (B x C x H x W), whether booleans or float32 logits.
MAX_MASK_PIXELS = Limit(
    "mask pixels per call",
    2_000_000_000,
    "pixels",
    "masks come back at the image's full size: 2 GB as booleans, 8 GB as logits",
)
#: Largest absolute value of a point or box coordinate, in pixels: 2**24, the largest integer
#: float32 (the decoder's dtype) holds exactly; a coordinate of 1e39 would become infinity.
MAX_COORDINATE = Limit("coordinate", 2**24, "pixels", "coordinates run through the model in float32")
#: Largest absolute value of a ``mask_input`` logit (SAM's own logits stay within a few tens).
MAX_MASK_LOGIT = Limit("mask_input logit", 10_000, "", "larger logits overflow float32 in the decoder")
#: ``points_per_side`` of the automatic mask generator: points_per_side**2 points per crop.
MAX_POINTS_PER_SIDE = Limit("points_per_side", 256, "", "65,536 decoder prompts per crop at most")
#: ``crop_n_layers`` of the automatic mask generator: layer i adds (2**i)**2 crops, each encoded.
MAX_CROP_LAYERS = Limit("crop_n_layers", 3, "", "85 crops (encoder runs) per image at most")
#: Points of one image over all its crops (the generator's total decoder work).
MAX_GENERATOR_POINTS = Limit("points per image", 1_048_576, "points", "bounds the generator's run time")
#: ``points_per_batch`` of the automatic mask generator (prompts of one decoder call).
MAX_POINTS_PER_BATCH = Limit("points_per_batch", MAX_PROMPTS.value, "", "as prompts per call")
#: Size of the embedding cache, in MiB (1 TiB: beyond any machine's memory).
MAX_CACHE_MB = Limit("cache_mb", 1_048_576, "MiB", "a typo such as 1e12 is refused, not allocated")
#: Size of a package's ``model.json``: real manifests are about 12 KB.
MAX_MANIFEST_BYTES = Limit("model.json size", 16 * 2**20, "bytes", "the manifest is read whole into memory")
#: Side of a package's square encoder input (``image_size``; SAM's is 1024).
MAX_IMAGE_SIZE = Limit("image_size", 8192, "pixels", "the encoder input is allocated from it")
#: Body of one HTTP request to the server (an encoded image and its prompt).
MAX_REQUEST_BYTES = Limit("request size", 64 * 2**20, "bytes", "read into memory before decoding")
#: The JSON of one request's prompt (points, boxes; a mask_input travels as an array).
MAX_PROMPT_JSON_BYTES = Limit("prompt size", 8 * 2**20, "bytes", "parsed into Python objects")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_threads() -> int:
    """The thread limit: the CPUs this process may use. More intra-op threads than CPUs only
    makes the threads wait for each other (1000 of them on 2 CPUs never finish)."""
    return available_cpus()


def check(
    value: float, limit: Limit | int, name: str | None = None, error: type[Exception] = SamDeployError
) -> None:
    """Raise ``error`` with a one-line message when ``value`` is over ``limit``.

    ``limit`` is a :class:`Limit` or a plain number (then ``name`` says what it bounds).
    """
    bound = limit.value if isinstance(limit, Limit) else limit
    label = name or (limit.name if isinstance(limit, Limit) else "value")
    if value > bound:
        unit = f" {limit.unit}" if isinstance(limit, Limit) and limit.unit else ""
        raise error(f"{label}: {value:,}{unit} is over the limit of {bound:,}{unit}")


def resolve_max_pixels(max_pixels: int | None) -> int:
    """The pixel limit to apply for a caller's ``max_pixels``: the value itself, or the hard
    ceiling for ``None`` / ``0`` ("no limit of my own"). Negative values and values over the
    ceiling raise :class:`~samdeploy.errors.OptionError`."""
    if max_pixels is None or max_pixels == 0:
        return PIXELS_CEILING.value
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise OptionError(
            f"max_pixels must be a positive integer (0 or None: the ceiling), got {max_pixels!r}"
        )
    if max_pixels > PIXELS_CEILING.value:
        raise OptionError(
            f"max_pixels {max_pixels:,} is over the ceiling of {PIXELS_CEILING.value:,} pixels"
            " (0 means that ceiling)"
        )
    return max_pixels
