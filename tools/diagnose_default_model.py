"""Diagnostics behind docs/default-model.md: where the default model's errors are, where a step's time goes.

    .venv/bin/python tools/diagnose_default_model.py threshold        # box/click IoU at shifted thresholds
    .venv/bin/python tools/diagnose_default_model.py profile-step     # one training step, by operator

``threshold`` runs the embedded package (or ``--package DIR``) on probe scenes (outside the reported
held-out set) and prints the mean IoU of the box (single mask) and click (best of 3) answers when the
logits are cut at other thresholds than 0, with the median ratio of predicted to true area: a model
whose masks are systematically too large or too small gains a lot from a shift, one with soft
boundaries does not. ``profile-step`` times one worker's training step (bf16 where the CPU has it,
one thread) and prints ``torch.profiler``'s table of operators.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

THRESHOLDS = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0)


def threshold(package: Path | None, start: int, scenes: int) -> None:
    import samdeploy
    from samdeploy.training.evaluation import held_out_scene
    from samdeploy.training.scenes import mask_iou, mask_to_box, random_interior_points

    predictor = samdeploy.SamPredictor(samdeploy.load_model(package))
    ious: dict[str, dict[float, list[float]]] = {
        kind: {t: [] for t in THRESHOLDS} for kind in ("box", "click")
    }
    ratios: dict[str, list[float]] = {"box": [], "click": []}
    for index in range(start, start + scenes):
        scene = held_out_scene(index)
        predictor.set_image(scene.image)
        rng = np.random.default_rng(index)
        for obj in scene.promptable_objects():
            truth = scene.mask(obj)
            box, _, _ = predictor.predict(box=mask_to_box(truth), multimask_output=False, return_logits=True)
            masks, scores, _ = predictor.predict(
                point_coords=random_interior_points(truth, 1, rng),
                point_labels=np.ones(1),
                return_logits=True,
            )
            for kind, logits in (("box", box[0]), ("click", masks[int(np.argmax(scores))])):
                for cut in THRESHOLDS:
                    ious[kind][cut].append(mask_iou(logits > cut, truth))
                ratios[kind].append(float((logits > 0).sum() / truth.sum()))
    for kind, by_cut in ious.items():
        table = ", ".join(f"{cut:+g}: {np.mean(values):.4f}" for cut, values in by_cut.items())
        print(f"{kind}: mean IoU by threshold {table}; median area ratio {np.median(ratios[kind]):.3f}")


def profile_step(steps: int) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from samdeploy.training.train import TrainConfig, _step_loss, build_model, native_bf16, step_scenes

    torch.set_num_threads(1)
    config = TrainConfig(bf16=native_bf16())
    model = build_model(seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    images = config.images_per_step // 2  # worker 0's share with the default 2 workers

    def step(index: int) -> list[float]:
        rng = np.random.default_rng([config.seed, 2, index, 0])
        marks = [time.perf_counter()]
        prepared = step_scenes(config, model, index, 0, images)
        marks.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss, *_ = _step_loss(model, config, prepared, rng, generator, refine=True)
        marks.append(time.perf_counter())
        optimizer.zero_grad()
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        return list(np.diff(marks))

    for index in range(3):
        step(index)
    times = np.array([step(index) for index in range(3, 3 + steps)]).mean(axis=0)
    print(
        f"one worker's step of {images} images (bf16 {config.bf16}): scenes {times[0]:.3f} s,"
        f" forward {times[1]:.3f} s, backward {times[2]:.3f} s, optimiser {times[3]:.3f} s"
    )
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(3 + steps)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("threshold", help="mean IoU at shifted logit thresholds")
    sweep.add_argument("--package", type=Path, help="model package folder (default: the embedded model)")
    sweep.add_argument("--start", type=int, default=10_000, help="first probe scene")
    sweep.add_argument("--scenes", type=int, default=40)
    timing = commands.add_parser("profile-step", help="time one training step, by operator")
    timing.add_argument("--steps", type=int, default=8, help="timed steps (after 3 warm-up steps)")
    args = parser.parse_args()
    if args.command == "threshold":
        threshold(args.package, args.start, args.scenes)
    else:
        profile_step(args.steps)


if __name__ == "__main__":
    main()
