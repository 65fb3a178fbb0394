"""Segment everything: samdeploy against the official ``SamAutomaticMaskGenerator``, side by side.

Both generators get the same random weights, the same picture and the same options (by default
vit_b, 32x32 points, no crops, the official thresholds), on the same number of threads, one after
the other in one run (each side in its own child process, so neither inherits the other's memory
arenas: a vit_b encoder pass holds several GB). Prints the wall times, their ratio, the per-stage times of both
sides and how well the masks agree, and writes them to ``benchmarks/results/everything.json``.

    .venv/bin/python benchmarks/bench_everything.py --threads 2
    .venv/bin/python benchmarks/bench_everything.py --model-type tiny --points-per-side 8   # smoke run
    .venv/bin/python benchmarks/bench_everything.py --package P --decoder-sweep 1,4,16,32,64,128

``--decoder-sweep`` times samdeploy's decoder alone (the generator's ``mask_decoder`` node, one
call per batch) per prompt at each number of points per call, on the picture's embedding, and
writes ``benchmarks/results/decoder_sweep.json``: it says which chunk the generator should use.
It also compares one 2-thread decoder session with two 1-thread sessions working at once.

``--package`` / ``--checkpoint`` reuse an exported model and the checkpoint it was exported from (a
vit_b export takes minutes); the official side is built with the architecture the package records,
so any SAM package with its checkpoint works, e.g. the embedded default model::

    .venv/bin/python benchmarks/bench_everything.py --package src/samdeploy/models/default \
        --checkpoint src/samdeploy/models/default/checkpoint.pth --threads 2
Needs the ``export`` extra (PyTorch and segment-anything) for the reference side.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "image_size": 256,
    "window_size": 7,
}


def picture(height: int, width: int, seed: int = 0, kind: str = "discs") -> np.ndarray:
    """HxWx3 uint8: flat-coloured discs on a gradient, or (``kind="scene"``) one of the synthetic
    scenes the default model was trained on (shapes, textures, holes), where it finds objects."""
    if kind == "scene":
        from samdeploy.training.scenes import generate_scene

        return generate_scene(seed, shape=(height, width)).image
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 200 // width, yy * 200 // height, np.full_like(xx, 60)], -1).astype(np.uint8)
    for _ in range(24):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(20, min(height, width) // 4)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image


def random_model(model_type: str, folder: Path, seed: int = 1) -> tuple[Path, Path]:
    """A random-weight checkpoint and its exported package in ``folder``."""
    import torch

    from samdeploy.export import PRESETS, SamConfig, build_sam, export_model

    config = PRESETS["vit_b"] if model_type == "vit_b" else SamConfig(**TINY)
    torch.manual_seed(seed)
    checkpoint = folder / "checkpoint.pth"
    torch.save(build_sam(config).state_dict(), checkpoint)
    export_model(checkpoint, folder / "package", force=True)
    return checkpoint, folder / "package"


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model (platform.processor() is often empty)."""
    from samdeploy.cpu import cpu_info

    info = cpu_info()
    return f"{info.model_name}, family {info.family} model {info.model}"


class StageTimer:
    """Wraps methods of an object so each call's wall time adds to a named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, method: str, stage: str) -> None:
        original: Callable[..., Any] = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start
                self.calls[stage] += 1

        setattr(owner, method, timed)


def official_run(
    checkpoint: Path, package: Path, image: np.ndarray, options: dict[str, Any]
) -> dict[str, Any]:
    """The official generator on ``checkpoint``, built with the architecture ``package`` records
    (the package exported from it): records, wall time and the time of its stages."""
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from samdeploy.export import SamConfig, load_sam, load_state_dict
    from samdeploy.package import ModelPackage

    config = SamConfig.from_json(ModelPackage.load(package).manifest["architecture"])
    sam = load_sam(load_state_dict(checkpoint), config)
    generator = SamAutomaticMaskGenerator(sam, **options)
    timer = StageTimer()
    predictor = generator.predictor
    timer.wrap(predictor.model, "preprocess", "normalize + pad")
    timer.wrap(predictor.model.image_encoder, "forward", "image encoder")
    timer.wrap(predictor.model.mask_decoder, "forward", "mask decoder")
    timer.wrap(predictor.model, "postprocess_masks", "upscale masks")
    counts = {"prompts": 0, "prompts_passing_pred_iou_thresh": 0, "masks_passing_pred_iou_thresh": 0}
    predict_torch = predictor.predict_torch

    def counted(*args: Any, **kwargs: Any) -> Any:
        """How many prompts have a mask above pred_iou_thresh: the share whose masks are kept."""
        masks, iou_preds, low_res = predict_torch(*args, **kwargs)
        passing = iou_preds > generator.pred_iou_thresh
        counts["prompts"] += len(iou_preds)
        counts["prompts_passing_pred_iou_thresh"] += int(passing.any(dim=1).sum())
        counts["masks_passing_pred_iou_thresh"] += int(passing.sum())
        return masks, iou_preds, low_res

    predictor.predict_torch = counted
    with torch.inference_mode():
        start = time.perf_counter()
        records = generator.generate(image)
        wall = time.perf_counter() - start
    stages = dict(timer.seconds)
    stages["everything else (filters, RLE, NMS, records)"] = wall - sum(stages.values())
    return {"records": records, "wall_s": wall, "stages_s": stages, "counts": counts}


def samdeploy_run(package: Path, image: np.ndarray, options: dict[str, Any], threads: int) -> dict[str, Any]:
    """samdeploy's generator: records, wall time and the engine's per-node profile."""
    from samdeploy import SamAutomaticMaskGenerator, load_model
    from samdeploy.engine import Profile

    model = load_model(package, threads=threads, cache_mb=0)
    generator = SamAutomaticMaskGenerator(model, **options)
    generator.generate(image[:64, :64])  # load the sessions and warm the caches of both sides' first call
    generator.profile = Profile()
    start = time.perf_counter()
    records = generator.generate(image)
    wall = time.perf_counter() - start
    stages = {s.node: s.total_ms / 1e3 for s in generator.profile.stats()}
    return {"records": records, "wall_s": wall, "stages_s": stages, "table": generator.profile.table()}


def agreement(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]], threshold: float = 0.95
) -> dict[str, Any]:
    """Masks of each side (uncompressed RLE records): how many are identical on the other side
    (same run lengths), and of the rest, how many have a match with IoU >= threshold."""
    from samdeploy.sam.amg import rle_to_mask

    def key(record: dict[str, Any]) -> tuple[int, ...]:
        return tuple(record["segmentation"]["size"]) + tuple(record["segmentation"]["counts"])

    our_keys, their_keys = {key(r) for r in ours}, {key(r) for r in theirs}
    ours = [r for r in ours if key(r) not in their_keys]
    theirs_left = [r for r in theirs if key(r) not in our_keys]
    identical = len(theirs) - len(theirs_left)
    theirs = theirs_left
    ours_masks = [rle_to_mask(r["segmentation"]) for r in ours]
    their_masks = [rle_to_mask(r["segmentation"]) for r in theirs]

    def matched(a_list: list[np.ndarray], b_list: list[np.ndarray]) -> int:
        hits = 0
        for a in a_list:
            for b in b_list:
                union = np.logical_or(a, b).sum()
                if union and np.logical_and(a, b).sum() / union >= threshold:
                    hits += 1
                    break
        return hits

    return {
        "ours": len(ours) + identical,
        "official": len(theirs) + identical,
        "identical": identical,
        "ours_matched": identical + matched(ours_masks, their_masks),
        "official_matched": identical + matched(their_masks, ours_masks),
    }


def decoder_sweep(package: Path, image: np.ndarray, sizes: list[int], threads: int, prompts: int) -> dict:
    """Milliseconds per prompt of the ``mask_decoder`` node at each batch size (points per call),
    over at least ``prompts`` prompts per size after one warm-up call, on the generator's grid."""
    from samdeploy import SamAutomaticMaskGenerator, load_model
    from samdeploy.engine import Profile
    from samdeploy.sam.automatic import CropInfo

    model = load_model(package, threads=threads, cache_mb=0)
    generator = SamAutomaticMaskGenerator(model, points_per_side=32)
    embeddings = model.encode(image).embeddings
    height, width = image.shape[:2]
    crop = CropInfo(box=(0, 0, width, height), layer=0, image_size=(height, width))
    grid = generator.point_grids[0] * np.array([[width, height]])
    rows = []
    for size in sizes:
        calls = max(2, -(-prompts // size))
        inputs = {"image_embeddings": embeddings, "crop": crop}
        generator.point_graph.run({**inputs, "points": grid[:size]})  # warm-up at this shape
        profile = Profile()
        for call in range(calls):
            start = (call * size) % (len(grid) - size + 1)
            generator.point_graph.run({**inputs, "points": grid[start : start + size]}, profile=profile)
        times = {s.node: s.total_ms for s in profile.stats()}
        row = {
            "points_per_call": size,
            "calls": calls,
            "ms_per_prompt": times["mask_decoder"] / (calls * size),
        }
        row["filter_ms_per_prompt"] = times["filter_masks"] / (calls * size)
        rows.append(row)
        print(json.dumps(row), flush=True)
    model.close()
    return {"threads": threads, "sizes": rows}


def session_inputs(path: str) -> list[Any]:
    """The inputs of an ONNX file, as ONNX Runtime lists them."""
    import onnxruntime as ort

    return list(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs())


def decoder_sessions(package: Path, size: int, rounds: int = 3) -> dict[str, float]:
    """Milliseconds per prompt of the low-res decoder (ONNX Runtime directly, random embedding):
    one session on 2 threads answering ``size`` points per call, against two 1-thread sessions
    answering ``size / 2`` each at the same time (each prompt's outputs are independent of the
    others', so both give the same records)."""
    import threading

    import onnxruntime as ort

    from samdeploy.package import MASK_FILTER_INPUT

    path = str(package / "mask_decoder_low_res.onnx")
    rng = np.random.default_rng(0)
    inputs = {i.name: i for i in session_inputs(path)}
    filter_feed = {}  # every prompt's masks, as the sweep is about the full decoder
    if MASK_FILTER_INPUT in inputs:
        filter_feed[MASK_FILTER_INPUT] = np.full(inputs[MASK_FILTER_INPUT].shape[0], -np.inf, np.float32)
    embedding = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)

    def session(threads: int) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def feed(points: int) -> dict[str, np.ndarray]:
        coords = np.zeros((points, 2, 2), np.float32)
        coords[:, 0] = rng.uniform(0, 1024, (points, 2))
        labels = np.tile(np.array([[1, -1]], np.float32), (points, 1))
        mask = np.zeros((1, 1, 256, 256), np.float32)
        return {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
                "mask_input": mask, "has_mask_input": np.zeros(1, np.float32),
                **filter_feed}  # fmt: skip

    def timed(pairs: list[tuple[Any, dict[str, np.ndarray]]]) -> float:
        for one, inputs in pairs:
            one.run(None, inputs)  # warm-up
        threads = [
            threading.Thread(target=lambda o=o, i=i: [o.run(None, i) for _ in range(rounds)])
            for o, i in pairs
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return (time.perf_counter() - start) / (rounds * size) * 1e3

    return {
        "points_per_call": size,
        "one_session_2_threads_ms_per_prompt": timed([(session(2), feed(size))]),
        "two_sessions_1_thread_ms_per_prompt": timed([(session(1), feed(size // 2)) for _ in range(2)]),
    }


def run_side(args: argparse.Namespace) -> None:
    """Child process: run one side and write its result (records as uncompressed RLE) as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    image = picture(args.height, args.width, args.seed, args.picture)
    options = {
        "points_per_side": args.points_per_side,
        "output_mode": "uncompressed_rle",
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
    }
    if args.side == "samdeploy":
        result = samdeploy_run(args.package, image, options, args.threads)
    else:
        result = official_run(args.checkpoint, args.package, image, options)
    args.side_output.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", choices=["vit_b", "tiny"], default="vit_b")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="both generators' IoU filter (official default 0.88; 0 keeps every mask, so no mask"
        " computation can be skipped)",
    )
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument(
        "--picture",
        choices=["discs", "scene"],
        default="discs",
        help="discs on a gradient, or a synthetic scene of the default model's training kind",
    )
    parser.add_argument("--seed", type=int, default=0, help="which picture of that kind")
    parser.add_argument("--package", type=Path, help="an exported package to reuse (with --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, help="the checkpoint that package was exported from")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "everything.json")
    parser.add_argument(
        "--decoder-sweep", metavar="N,N,...", help="time the decoder per prompt at these batch sizes"
    )
    parser.add_argument("--sweep-prompts", type=int, default=128, help="prompts timed per batch size")
    parser.add_argument("--side", choices=["samdeploy", "official"], help=argparse.SUPPRESS)
    parser.add_argument("--side-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        run_side(args)
        return
    if args.decoder_sweep:
        if args.package is None:
            parser.error("--decoder-sweep needs --package")
        sizes = [int(n) for n in args.decoder_sweep.split(",")]
        image = picture(args.height, args.width, args.seed, args.picture)
        sweep = decoder_sweep(args.package, image, sizes, args.threads, args.sweep_prompts)
        sweep["sessions"] = decoder_sessions(args.package, 64)
        print(json.dumps(sweep["sessions"]))
        sweep |= {"cpu": cpu_name(), "load_average": os.getloadavg()}
        output = args.output.with_name("decoder_sweep.json")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(sweep, indent=2) + "\n")
        return

    with tempfile.TemporaryDirectory() as temp:
        model = f"{args.model_type}, random weights"
        if args.package is None or args.checkpoint is None:
            args.checkpoint, args.package = random_model(args.model_type, Path(temp))
        else:
            model = f"the package {args.package} and its checkpoint {args.checkpoint.name}"
        sides = {}
        for side in ("samdeploy", "official"):
            side_output = Path(temp) / f"{side}.json"
            forwarded = ["--side", side, "--side-output", str(side_output), "--package", str(args.package)]
            forwarded += ["--checkpoint", str(args.checkpoint), "--model-type", args.model_type]
            forwarded += ["--threads", str(args.threads), "--points-per-side", str(args.points_per_side)]
            forwarded += ["--height", str(args.height), "--width", str(args.width), "--picture", args.picture]
            forwarded += ["--seed", str(args.seed)]
            forwarded += ["--pred-iou-thresh", str(args.pred_iou_thresh)]
            forwarded += ["--stability-score-thresh", str(args.stability_score_thresh)]
            subprocess.run([sys.executable, __file__, *forwarded], check=True)
            sides[side] = json.loads(side_output.read_text())
    ours, theirs = sides["samdeploy"], sides["official"]
    ratio = theirs["wall_s"] / ours["wall_s"]
    result = {
        "model": model,
        "image": [args.height, args.width],
        "picture": args.picture,
        "seed": args.seed,
        "options": {
            "points_per_side": args.points_per_side,
            "pred_iou_thresh": args.pred_iou_thresh,
            "stability_score_thresh": args.stability_score_thresh,
        },
        "threads": args.threads,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "preload": os.environ.get("LD_PRELOAD"),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "official_s": round(theirs["wall_s"], 3),
        "samdeploy_s": round(ours["wall_s"], 3),
        "speedup": round(ratio, 2),
        "official_stages_s": {k: round(v, 3) for k, v in theirs["stages_s"].items()},
        "samdeploy_stages_s": {k: round(v, 3) for k, v in ours["stages_s"].items()},
        "official_counts": theirs["counts"],
        "agreement": agreement(ours["records"], theirs["records"]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(ours["table"])
    print(json.dumps(result, indent=2))
    print(f"official {theirs['wall_s']:.2f} s, samdeploy {ours['wall_s']:.2f} s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
