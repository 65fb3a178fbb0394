"""Measure the default model on the held-out generated scenes, through the samdeploy runtime.

    .venv/bin/python tools/evaluate_default_model.py                      # the embedded package
    .venv/bin/python tools/evaluate_default_model.py --package DIR --scenes 200 --doc docs/default-model.md
    .venv/bin/python tools/evaluate_default_model.py --checkpoint runs/default.pth   # torch, official predictor
    .venv/bin/python tools/evaluate_default_model.py --write-example     # (re)write examples/shapes*.png
    .venv/bin/python tools/evaluate_default_model.py --ceiling 256 64 128  # IoU bound set by the mask grid

The quality figures are defined in ``samdeploy.training.evaluation``. With ``--doc`` the results table
in that Markdown file (between ``<!-- quality:begin -->`` and ``<!-- quality:end -->``) is replaced.
The bundled example (``examples/shapes.png``, its exact mask ``examples/shapes_mask.png`` and the
README's click) is measured too.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import Progress

from samdeploy.training.evaluation import (
    EXAMPLE_POINT,
    Predictor,
    QualityReport,
    evaluate,
    example_iou,
    example_scene,
    grid_ceiling,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "shapes.png"
EXAMPLE_MASK = ROOT / "examples" / "shapes_mask.png"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def write_example() -> None:
    """Write the bundled example image and the exact mask of the object under EXAMPLE_POINT."""
    scene = example_scene()
    x, y = EXAMPLE_POINT
    EXAMPLE_IMAGE.parent.mkdir(exist_ok=True)
    Image.fromarray(scene.image).save(EXAMPLE_IMAGE)
    Image.fromarray((scene.labels == scene.labels[y, x]).astype(np.uint8) * 255).save(EXAMPLE_MASK)


def markdown(report: QualityReport, example: float, source: str) -> str:
    rows = [
        ("one positive click, best of 3 by predicted score", report.point_best_of_3, ">= 0.90"),
        ("one positive click, single mask (`multimask_output=False`)", report.point_single, ""),
        ("tight box, single mask", report.box_single, ">= 0.93"),
        ("tight box, best of 3 by predicted score", report.box_best_of_3, ""),
        ("three positive clicks, single mask", report.points_single, ""),
    ]
    lines = [
        f"Measured with `{source}` on held-out scenes 0..{report.scenes - 1} ({report.objects} objects).",
        "",
        "| prompt | mean IoU | target |",
        "| --- | ---: | ---: |",
        *(f"| {name} | {value:.3f} | {target} |" for name, value, target in rows),
        "",
        f"Prompt dependence (far-apart clicks give different masks): {report.prompt_dependence:.1%} of scenes.",
        f"README example (`examples/shapes.png`, click {EXAMPLE_POINT[0]},{EXAMPLE_POINT[1]}): IoU {example:.3f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--package", type=Path, help="model package folder (default: the embedded default model)"
    )
    source.add_argument(
        "--checkpoint", type=Path, help="a .pth state dict, run in PyTorch by the official predictor"
    )
    source.add_argument(
        "--write-example", action="store_true", help="write examples/shapes.png and its mask, then exit"
    )
    parser.add_argument(
        "--ceiling",
        type=int,
        nargs="+",
        metavar=("IMAGE_SIZE", "LOW_RES"),
        help="print the mean IoU that perfect LOW_RES x LOW_RES logits reach (for each LOW_RES), then exit",
    )
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--doc", type=Path, help="Markdown file whose results table to replace")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    if args.write_example:
        write_example()
        return
    if args.ceiling:
        if len(args.ceiling) < 2:
            raise SystemExit("--ceiling takes the input size and one or more low-res sizes")
        size, *grids = args.ceiling
        for grid in grids:
            ceiling = grid_ceiling(size, grid, scenes=args.scenes)
            print(f"input {size}, low-res {grid}x{grid}: perfect logits reach mean IoU {ceiling:.3f}")
        return
    if args.checkpoint is not None:
        import torch
        from segment_anything import SamPredictor as TorchPredictor

        from samdeploy.export.checkpoint import load_sam, load_state_dict, resolve_config

        torch.set_num_threads(2)
        state = load_state_dict(args.checkpoint)
        predictor: Predictor = TorchPredictor(load_sam(state, resolve_config(state)))
        label = f"segment_anything.SamPredictor on {args.checkpoint.name}"
    else:
        import samdeploy

        predictor = samdeploy.SamPredictor(samdeploy.load_model(args.package))
        label = (
            "samdeploy.SamPredictor(samdeploy.load_model("
            + (f"'{args.package}'" if args.package else "")
            + "))"
        )

    console = Console()
    started = time.perf_counter()
    with Progress(console=console) as progress:
        task = progress.add_task("held-out scenes", total=args.scenes)
        report = evaluate(predictor, scenes=args.scenes, on_scene=lambda _: progress.advance(task))
    image = np.asarray(Image.open(EXAMPLE_IMAGE).convert("RGB"))
    example = example_iou(predictor, image, np.asarray(Image.open(EXAMPLE_MASK)) > 127)
    table = markdown(report, example, label)
    console.print(table)
    console.print(f"evaluated in {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({**report.to_json(), "example_iou": example}, indent=2) + "\n")
    if args.doc:
        text = args.doc.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{args.doc} has no {BEGIN} ... {END} block to replace")
        args.doc.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))


if __name__ == "__main__":
    main()
