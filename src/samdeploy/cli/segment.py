"""``samdeploy segment`` (prompted masks for image files) and ``samdeploy graph`` (show the SAM graph).

    samdeploy segment photo.jpg --point 500,375 --output mask.png --overlay overlay.png --json result.json
    samdeploy segment a.jpg b.jpg photos/ --box 10,20,300,400 --output-dir out/ --profile
    samdeploy graph --model models/sam_vit_b --save graph.json

Prompts are in pixels of the (EXIF-oriented) image and must lie inside it. With several images (or
a folder, searched recursively) the same prompt applies to each, and each writes
``<name>.mask.png``, ``<name>.overlay.png`` and ``<name>.json`` into ``--output-dir`` (names as
:mod:`samdeploy.cli.inputs` gives them). Missing output folders are created. A bad image fails alone
(one error line); the exit code is 2 if any failed. Files are written whole or not at all.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated

import typer
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
    resolve_device,
)
from samdeploy.errors import PromptError, SamDeployError
from samdeploy.sam.images import DEFAULT_MAX_PIXELS

MODES = ("sequential", "task", "pipeline")


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` (foreground) or ``X,Y,LABEL`` with LABEL 1 (foreground) or 0 (background)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise PromptError(
            f"malformed --point '{text}': use X,Y or X,Y,LABEL (LABEL 1 = foreground, 0 = background)"
        )
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise PromptError(f"malformed --point '{text}': X and Y must be numbers") from None
    label = 1
    if len(parts) == 3:
        if parts[2] not in ("0", "1"):
            raise PromptError(
                f"unknown label '{parts[2]}' in --point '{text}': use 1 (foreground) or 0 (background)"
            )
        label = int(parts[2])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptError(f"--point '{text}' is not a finite position")
    return x, y, label


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` in pixels (top-left and bottom-right corners)."""
    parts = text.split(",")
    try:
        values = tuple(float(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise PromptError(f"malformed --box '{text}': use X0,Y0,X1,Y1 (four numbers, pixels)")
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"--box '{text}' is not finite")
    return values  # type: ignore[return-value]


def _outputs(
    images: list[InputImage],
    output: Path | None,
    overlay: Path | None,
    json_path: Path | None,
    output_dir: Path | None,
) -> list[dict[str, Path | None]]:
    """Where each image's mask, overlay and JSON go (the folders are created later, by
    :func:`~samdeploy.cli.inputs.create_folders`, once the model has loaded)."""
    if output_dir is not None:
        if output or overlay or json_path:
            raise SamDeployError("use either --output-dir or --output/--overlay/--json, not both")
        check_output_dir(output_dir)
        return [
            {
                "mask": output_dir / f"{image.name}.mask.png",
                "overlay": output_dir / f"{image.name}.overlay.png",
                "json": output_dir / f"{image.name}.json",
            }
            for image in images
        ]
    if len(images) > 1:
        raise SamDeployError("several images (or a folder) need --output-dir DIR (one mask per image)")
    if output is None:
        raise SamDeployError("give --output mask.png (or --output-dir DIR)")
    return [{"mask": output, "overlay": overlay, "json": json_path}]


@app.command()
def segment(
    inputs: ImagesArgument,
    point: Annotated[
        list[str] | None,
        typer.Option(
            "--point",
            "-p",
            metavar="X,Y[,LABEL]",
            help="a point in pixels; LABEL 1 foreground (default), 0 background; repeat",
        ),
    ] = None,
    box: Annotated[
        str | None, typer.Option("--box", "-b", metavar="X0,Y0,X1,Y1", help="a box in pixels")
    ] = None,
    multimask: Annotated[
        bool, typer.Option("--multimask", help="predict 3 masks; the best-scoring one is the mask PNG")
    ] = False,
    model: ModelOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="mask PNG (original size, 0/255)"),
    ] = None,
    overlay: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="overlay PNG: mask tinted over the image, prompts drawn"),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="JSON: scores, area, bbox, COCO RLE")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="folder for <name>.mask.png, <name>.overlay.png, <name>.json"),
    ] = None,
    mode: Annotated[
        str, typer.Option(metavar="MODE", help="executor: sequential, task or pipeline")
    ] = "pipeline",
    device: DeviceOption = None,
    backend: BackendOption = None,
    threads: ThreadsOption = None,
    max_pixels: MaxPixelsOption = DEFAULT_MAX_PIXELS,
    profile: ProfileOption = False,
) -> None:
    """Segment images with point and box prompts; write masks, overlays and JSON."""
    from samdeploy.engine import Profile
    from samdeploy.loading import load_model
    from samdeploy.sam.prompts import validate_prompt
    from samdeploy.sam.results import json_bytes, mask_png, overlay_png, result_record, write_atomic

    if mode not in MODES:
        raise SamDeployError(f"unknown --mode '{mode}'; choose one of {', '.join(MODES)}")
    if max_pixels < 0:
        raise SamDeployError("--max-pixels must be positive, or 0 for no limit")
    points = [parse_point(text) for text in point or []]
    if not points and box is None:
        raise PromptError("no prompt: give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    prompt = validate_prompt(
        point_coords=[p[:2] for p in points] if points else None,
        point_labels=[p[2] for p in points] if points else None,
        box=parse_box(box) if box is not None else None,
    )
    images = expand_images(inputs)
    targets = _outputs(images, output, overlay, json_path, output_dir)
    check_single(images)
    backend, providers = resolve_device(device, backend)

    sam = load_model(
        model, backend=backend, providers=providers, mode=mode, threads=threads, inside_image=True
    )
    console = Console(stderr=True)
    try:
        create_folders(path.parent for target in targets for path in target.values() if path is not None)
    except SamDeployError:
        sam.close()
        raise
    say_if_demo(sam.package, console)
    about_model = model_info(sam.package)
    timings = Profile() if profile else None
    failed = 0
    paths = [image.path for image in images]
    columns = (TextColumn("segment"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with sam, Progress(*columns, console=console, transient=True, disable=len(images) == 1) as progress:
        task = progress.add_task("segment", total=len(images))
        for result in sam.segment_files(paths, prompt, multimask, max_pixels or None, timings):
            progress.advance(task)
            if result.error is not None:
                failed += 1
                if len(images) == 1:
                    raise result.error
                console.print(
                    f"[bold red]error:[/] {result.path}: {result.error}", highlight=False, soft_wrap=True
                )
                continue
            segmentation = result.segmentation
            best = segmentation.masks[segmentation.best]
            best_score = float(segmentation.scores[segmentation.best])
            target = targets[result.index]
            # Encode everything first, then write: no output of this image is left half-done.
            files = {target["mask"]: mask_png(best)}
            if target["overlay"] is not None:
                files[target["overlay"]] = overlay_png(result.image, best, prompt)
            if target["json"] is not None:
                record = result_record(segmentation, str(result.path), prompt)
                for entry in record["masks"]:
                    entry["low_confidence"] = is_low_confidence(entry["score"])
                record["low_confidence"] = is_low_confidence(best_score)
                record["model"] = about_model
                files[target["json"]] = json_bytes(record)
            for path, data in files.items():
                write_atomic(path, data)
            scores = ", ".join(f"{s:.3f}" for s in segmentation.scores)
            warning = f" {low_confidence_label()}" if is_low_confidence(best_score) else ""
            console.print(
                f"{escape(str(result.path))}: mask {int(best.sum())} px, score {scores}{warning}"
                f" -> {escape(str(target['mask']))}",
                highlight=False,
                soft_wrap=True,
            )
    if timings is not None:
        Console().print(timings.table(), highlight=False)
    if failed:
        raise typer.Exit(code=2)


def _tensor(spec) -> str:
    """``name[1, 3, 1024, 1024]``, dynamic axes by name."""
    return f"{spec.name}[{', '.join(str(dim) for dim in spec.shape)}]"


@app.command()
def graph(
    model: ModelOption = None,
    save: Annotated[
        Path | None, typer.Option(metavar="FILE", help="also write the graph as JSON to this file")
    ] = None,
    device: DeviceOption = None,
    backend: BackendOption = None,
) -> None:
    """Print the SAM graph of a model package: nodes, ports and backends; optionally save it as JSON."""
    from samdeploy.engine import Inference
    from samdeploy.loading import load_model
    from samdeploy.sam.results import write_atomic

    backend, providers = resolve_device(device, backend)
    sam = load_model(model, backend=backend, providers=providers)
    with sam:
        if save is not None:
            create_folders([save.parent])
        console = Console(soft_wrap=True, highlight=False)
        say = functools.partial(console.print, markup=False)
        package = sam.package
        say(
            f"graph {sam.graph.name}: {package.root} ({package.model_type}, input {package.image_size}px,"
            f" {package.precision}, backend {sam.backend_summary})"
        )
        for part in (sam.encode_graph, sam.decode_graph):
            say(f"  {part.name}: {', '.join(part.input_ports())} -> {', '.join(part.output_ports())}")
            for node in part.nodes.values():
                if isinstance(node, Inference):
                    ins = ", ".join(_tensor(t) for t in node.input_specs)
                    outs = ", ".join(_tensor(t) for t in node.output_specs)
                else:
                    ins, outs = ", ".join(node.input_ports()), ", ".join(node.output_ports())
                say(f"    {node.name} ({node.type_name}): {ins} -> {outs}")
                if isinstance(node, Inference):
                    providers = ", ".join(getattr(node.backend, "providers", []))
                    say(f"      backend {node.params.backend} [{providers}], model {node.path}")
        if save is not None:
            write_atomic(save, (sam.graph.to_json() + "\n").encode())
            say(f"saved {save}")
