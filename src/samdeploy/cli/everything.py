"""``samdeploy everything``: segment everything in image files (automatic mask generation).

    samdeploy everything photo.jpg --output-dir out/
    samdeploy everything a.jpg photos/ --output-dir out/ --format png --crop-n-layers 1 --min-mask-region-area 100

Generator options left out take the model package's recommendation (its manifest's ``generator``,
shown by ``samdeploy inspect``), else the official defaults. Per image (a folder stands for its
images, recursively; ``<name>`` as :mod:`samdeploy.cli.inputs` gives it), into ``--output-dir``
(created when missing):

- ``--format coco`` (default): ``<name>.json``, COCO-style: the image's file name and size, and one
  annotation per mask with its COCO RLE ``segmentation``, ``area``, ``bbox`` (XYWH),
  ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box`` and ``low_confidence``; and
  ``model``: the package, the generator settings used, and the demo note for the embedded model;
- ``--format json``: the same with uncompressed RLE (``{"size", "counts": [ints]}``);
- ``--format png``: ``<name>.labels.png``, a label map (0 = no mask, i = the i-th mask of the
  generator's list; 8-bit up to 255 masks, else 16-bit; smaller masks drawn over larger ones);
- always ``<name>.overlay.png``: the image with each mask tinted in its own colour.

A bad image fails alone (one error line); the exit code is 2 if any failed. Files are written whole
or not at all.
"""

from __future__ import annotations

import colorsys
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from samdeploy.cli.app import app
from samdeploy.cli.inputs import InputImage, check_output_dir, check_single, create_folders, expand_images
from samdeploy.cli.notices import is_low_confidence, low_confidence_label, model_info, say_if_demo
from samdeploy.cli.options import (
    BackendOption,
    DeviceOption,
    ImagesArgument,
    MaxPixelsOption,
    ModelOption,
    ProfileOption,
    ThreadsOption,
    generator_options,
    resolve_device,
)
from samdeploy.errors import SamDeployError
from samdeploy.sam.images import DEFAULT_MAX_PIXELS

FORMATS = ("coco", "json", "png")
OVERLAY_ALPHA = 0.5


def label_map_png(masks: list[np.ndarray], size: tuple[int, int]) -> bytes:
    """HxW masks -> PNG label map of ``size`` (H, W): pixel = 1 + index of the smallest mask covering
    it, 0 where no mask does. 8-bit for up to 255 masks, else 16-bit."""
    labels = np.zeros(size, dtype=np.uint8 if len(masks) <= 255 else np.uint16)
    for index in sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i]))):
        labels[masks[index]] = index + 1
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    return buffer.getvalue()


def mask_colours(count: int) -> np.ndarray:
    """``count`` x 3 distinct bright RGB colours (golden-ratio hues), the same for every run."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return (
        np.array([colorsys.hsv_to_rgb(hue, 0.8, 1.0) for hue in hues], dtype=np.float32).reshape(-1, 3) * 255
    )


def overlay_png(image: np.ndarray, masks: list[np.ndarray]) -> bytes:
    """The image with each mask tinted in its own colour, larger masks first. PNG bytes."""
    canvas = image.astype(np.float32)
    colours = mask_colours(len(masks))
    for index in sorted(range(len(masks)), key=lambda i: -int(np.count_nonzero(masks[i]))):
        mask = masks[index]
        canvas[mask] = canvas[mask] * (1 - OVERLAY_ALPHA) + colours[index] * OVERLAY_ALPHA
    buffer = io.BytesIO()
    Image.fromarray(np.rint(canvas).astype(np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def coco_document(path: Path, image: np.ndarray, records: list[dict[str, Any]]) -> dict[str, Any]:
    """A COCO-style document for one image: ``image`` (file name, height, width) and ``annotations``
    (each also ``low_confidence``: its predicted IoU is below the CLI's threshold)."""
    height, width = image.shape[:2]
    annotations = [
        {"id": i + 1, **record, "low_confidence": is_low_confidence(record["predicted_iou"])}
        for i, record in enumerate(records)
    ]
    return {"image": {"file_name": path.name, "height": height, "width": width}, "annotations": annotations}


@app.command()
@generator_options
def everything(
    inputs: ImagesArgument,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", metavar="DIR", help="folder for each image's outputs")
    ],
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="coco|json|png",
            help="coco (JSON, COCO RLE), json (uncompressed RLE) or png (label map)",
        ),
    ] = "coco",
    model: ModelOption = None,
    device: DeviceOption = None,
    backend: BackendOption = None,
    threads: ThreadsOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    profile: ProfileOption = False,
    generator_options: dict[str, Any] | None = None,
) -> None:
    """Segment everything in images: masks as COCO JSON (or a PNG label map) and a colour overlay.

    A generator option left out takes the value the model package recommends (samdeploy inspect
    shows it), else the official default shown here.
    """
    from samdeploy.engine import Profile
    from samdeploy.loading import load_model, mask_generator_for
    from samdeploy.sam.images import load_image
    from samdeploy.sam.results import write_atomic

    if output_format not in FORMATS:
        raise SamDeployError(f"unknown --format '{output_format}'; choose one of {', '.join(FORMATS)}")
    if max_pixels < 0:
        raise SamDeployError("--max-pixels must be positive, or 0 for no limit")
    check_output_dir(output_dir)
    images = expand_images(inputs)
    check_single(images)
    backend, providers = resolve_device(device, backend)

    options = {
        # Options left out stay out: each family's generator fills them (SAM: the package's recommendation).
        **{name: value for name, value in (generator_options or {}).items() if value is not None},
        "output_mode": {"coco": "coco_rle", "json": "uncompressed_rle", "png": "binary_mask"}[output_format],
    }
    sam = load_model(model, backend=backend, providers=providers, threads=threads, cache_mb=0)
    console = Console(stderr=True)
    failed = 0
    with sam:
        generator = mask_generator_for(sam, **options)
        # once every option and the model are good
        create_folders(output_dir / image.name.parent for image in images)
        say_if_demo(sam.package, console)
        recommended = getattr(generator, "recommended", {})  # SAM packages' recommended settings
        if recommended:
            settings = ", ".join(f"{name} {value:g}" for name, value in recommended.items())
            console.print(f"the model package recommends: {settings}", highlight=False, soft_wrap=True)
        about_model = {**model_info(sam.package), "generator": asdict(generator.config)}
        generator.profile = Profile() if profile else None
        crops_per_image = sum(4**layer for layer in range(generator.config.crop_n_layers + 1))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            image_task = progress.add_task("images", total=len(images))
            crop_task = progress.add_task("crops", total=len(images) * crops_per_image)
            for number, item in enumerate(images):
                path = item.path
                try:
                    image = load_image(path, max_pixels=max_pixels or None)
                    records = generator.generate(
                        image,
                        progress=lambda done, _total, n=number: progress.update(
                            crop_task, completed=n * crops_per_image + done
                        ),
                    )
                    files = _encode_outputs(item, image, records, output_format, output_dir, about_model)
                except SamDeployError as exc:
                    if len(images) == 1:
                        raise
                    failed += 1
                    console.print(
                        f"[bold red]error:[/] {escape(str(path))}: {exc}", highlight=False, soft_wrap=True
                    )
                    continue
                finally:
                    progress.update(crop_task, completed=(number + 1) * crops_per_image)
                    progress.advance(image_task)
                for target, data in files.items():
                    write_atomic(target, data)
                low = sum(is_low_confidence(record["predicted_iou"]) for record in records)
                note = f", {low_confidence_label(low)}" if low else ""
                console.print(
                    f"{escape(str(path))}: {len(records)} masks{note}"
                    f" -> {escape(', '.join(str(t) for t in files))}",
                    highlight=False,
                    soft_wrap=True,
                )
    if generator.profile is not None:
        Console().print(generator.profile.table(), highlight=False)
    if failed:
        raise typer.Exit(code=2)


def _encode_outputs(
    item: InputImage,
    image: np.ndarray,
    records: list[dict[str, Any]],
    output_format: str,
    output_dir: Path,
    about_model: dict[str, Any],
) -> dict[Path, bytes]:
    """Every output file of one image, encoded in memory first so none is left half-written."""
    from pycocotools import mask as mask_utils

    from samdeploy.sam.amg import rle_to_mask

    base = output_dir / item.name
    if output_format == "png":
        masks = [record["segmentation"] for record in records]
        return {
            base.with_name(f"{base.name}.labels.png"): label_map_png(masks, image.shape[:2]),
            base.with_name(f"{base.name}.overlay.png"): overlay_png(image, masks),
        }
    document = coco_document(item.path, image, records)
    document["model"] = about_model
    if output_format == "coco":
        masks = [mask_utils.decode(record["segmentation"]).astype(bool) for record in records]
        text = json.dumps(document, indent=2)
    else:  # uncompressed RLE counts are long integer lists: compact JSON keeps the file small
        masks = [rle_to_mask(record["segmentation"]) for record in records]
        text = json.dumps(document, separators=(",", ":"))
    return {
        base.with_name(f"{base.name}.json"): (text + "\n").encode(),
        base.with_name(f"{base.name}.overlay.png"): overlay_png(image, masks),
    }
