"""samdeploy's SAM 2.1 packages against the official PyTorch ``SAM2ImagePredictor`` and
``SAM2AutomaticMaskGenerator`` on CPU, phase by phase.

Both sides get the same weights (an official config, seeded random unless ``--checkpoint``), the
same 1024x768 image, the same one-point prompt and the same generator settings, on the same
threads. Phases (``--phase``, comma-separated):

* ``encoder``: ``set_image`` (embedding cache off on the samdeploy side).
* ``predict``: a one-point ``predict`` (multimask) on the set image.
* ``everything``: ``generate`` with ``--points-per-side`` (the official defaults otherwise).

PyTorch runs at its best on CPU: eager fp32 in a process of its own with tcmalloc preloaded when
installed (``apt-get install libtcmalloc-minimal4``; OpenVINO aborts under it, so samdeploy stays
in this process), and bf16 autocast for the encoder, the figure the fast packages are compared
with. samdeploy runs each ``--variants`` package: ``fp32`` (the export) and the ``fp32-openvino``
(the same graphs, the encoder on OpenVINO at f32), ``int8``, ``bf16`` and ``int8-bf16`` packages of
``samdeploy.export.precision``, made from it (all but int8 need OpenVINO, the bf16 ones native bf16), whose accuracy figures against the fp32 package (the export's accuracy
bar: every encoder output's cosine, mask agreement over the parity prompts) go into the report.
The sides run one after the other, each with the machine to itself: run it on a quiet machine.

    .venv/bin/python benchmarks/bench_sam2.py --size tiny --threads 2
    .venv/bin/python benchmarks/bench_sam2.py --size base_plus --phase encoder,predict --work-dir /tmp/b+

``--work-dir`` keeps the checkpoint and the packages between runs (made there when missing). The
result goes to ``benchmarks/results/sam2.1_hiera_<size>.json`` and a markdown table on stdout.
Needs the official ``sam2`` (see docs/sam2.md) for the reference side and the export.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"tiny": "sam2.1_hiera_t.yaml", "small": "sam2.1_hiera_s.yaml", "base_plus": "sam2.1_hiera_b+.yaml"}
PHASES = ("encoder", "predict", "everything")
VARIANTS = ("fp32", "fp32-openvino", "int8", "bf16", "int8-bf16")
TCMALLOC = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)
POINT = {"point_coords": np.array([[512, 384]]), "point_labels": np.array([1])}


def bench_image(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xx * 0.3) % 255, (yy * 0.5) % 255, ((xx + yy) * 0.2) % 255], axis=-1)
    return np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def timed(call: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median and min milliseconds of ``repeat`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "runs": len(times)}


# ----------------------------------------------------------------------------- the PyTorch side


def torch_side(args: argparse.Namespace) -> dict[str, Any]:
    """The official predictor and generator, timed phase by phase (run in a process of its own)."""
    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from samdeploy.export import load_state_dict
    from samdeploy.export.sam2 import Sam2Config, load_sam2, official_config_path, official_predictor

    torch.set_num_threads(args.threads)
    config = Sam2Config.from_yaml(official_config_path(f"configs/sam2.1/{SIZES[args.size]}"))
    model = load_sam2(load_state_dict(args.checkpoint), config)
    predictor = official_predictor(model)
    image = bench_image()
    out: dict[str, Any] = {}
    with torch.inference_mode():
        if "encoder" in args.phase:

            def encode_bf16() -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    predictor.set_image(image)

            out["encoder"] = {
                "pytorch eager fp32": timed(lambda: predictor.set_image(image), args.repeat),
                "pytorch bf16 autocast": timed(encode_bf16, args.repeat),
            }
        if "predict" in args.phase:
            predictor.set_image(image)
            out["predict"] = {
                "pytorch eager fp32": timed(lambda: predictor.predict(**POINT), args.repeat * 5)
            }
        if "everything" in args.phase:
            generator = SAM2AutomaticMaskGenerator(model, points_per_side=args.points_per_side)
            masks: list[int] = []
            row = timed(lambda: masks.append(len(generator.generate(image))), args.everything_repeat)
            out["everything"] = {"pytorch eager fp32": {**row, "masks": masks[-1]}}
    return out


def run_torch_side(args: argparse.Namespace, allocator: str) -> dict[str, Any]:
    """:func:`torch_side` in a child process with ``allocator`` (tcmalloc preloaded, or glibc)."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if allocator == "tcmalloc":
        env["LD_PRELOAD"] = next(p for p in TCMALLOC if Path(p).exists())
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        command = [
            sys.executable,
            __file__,
            "--torch-side",
            result.name,
            "--size",
            args.size,
            "--threads",
            str(args.threads),
            "--repeat",
            str(args.repeat),
            "--everything-repeat",
            str(args.everything_repeat),
            "--points-per-side",
            str(args.points_per_side),
            "--phase",
            ",".join(args.phase),
            "--checkpoint",
            str(args.checkpoint),
        ]
        subprocess.run(command, env=env, check=True)
        return json.loads(Path(result.name).read_text())


# ----------------------------------------------------------------------------- the samdeploy side


def prepare_packages(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Path]:
    """The checkpoint and each variant's package in ``args.work_dir`` (made there when missing)."""
    import torch

    from samdeploy.export import export_model
    from samdeploy.export.precision import optimize_package
    from samdeploy.export.sam2 import Sam2Config, official_config_path, random_sam2

    if args.checkpoint is None:
        args.checkpoint = args.work_dir / "checkpoint.pt"
        if not args.checkpoint.exists():
            log("random weights (seed 0)")
            config = Sam2Config.from_yaml(official_config_path(f"configs/sam2.1/{SIZES[args.size]}"))
            torch.save({"model": random_sam2(config, seed=0).state_dict()}, args.checkpoint)
    packages = {"fp32": args.package or args.work_dir / "package"}
    if not (packages["fp32"] / "model.json").exists():
        log("exporting the fp32 package")
        export_model(args.checkpoint, packages["fp32"], force=True)
    for variant in args.variants:
        if variant == "fp32":
            packages[variant] = packages["fp32"]
            continue
        packages[variant] = args.work_dir / variant
        if not (packages[variant] / "model.json").exists():
            log(f"making the {variant} package (accuracy checked against fp32)")
            optimize_package(
                packages["fp32"],
                packages[variant],
                variant,
                threads=args.threads,
                measure_runs=0,
                check_images=2,
                strict=False,
            )
    return {variant: packages[variant] for variant in args.variants}


def accuracy(package: Path) -> dict[str, Any] | None:
    """The accuracy figures ``optimize_package`` recorded for ``package`` (None for the export)."""
    recorded = json.loads((package / "model.json").read_text())["export"].get("precision")
    if not recorded or "accuracy" not in recorded:
        return None
    return {
        "worst": recorded["accuracy"]["worst"],
        "passed": recorded["passed"],
        "bar": recorded["accuracy_bar"],
    }


def samdeploy_side(args: argparse.Namespace, packages: dict[str, Path]) -> dict[str, Any]:
    import samdeploy

    image = bench_image()
    out: dict[str, Any] = {phase: {} for phase in args.phase}
    for variant, package in packages.items():
        name = f"samdeploy {variant}"
        with samdeploy.load_model(package, threads=args.threads, cache_mb=0) as model:
            predictor = samdeploy.SAM2ImagePredictor(model)
            if "encoder" in args.phase:
                out["encoder"][name] = timed(lambda p=predictor: p.set_image(image), args.repeat)
            if "predict" in args.phase:
                predictor.set_image(image)
                out["predict"][name] = timed(lambda p=predictor: p.predict(**POINT), args.repeat * 5)
            if "everything" in args.phase:
                generator = samdeploy.SAM2AutomaticMaskGenerator(model, points_per_side=args.points_per_side)
                masks: list[int] = []
                row = timed(
                    lambda g=generator, m=masks: m.append(len(g.generate(image))), args.everything_repeat
                )
                out["everything"][name] = {**row, "masks": masks[-1], "backend": model.backend_summary}
    return out


# ----------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed encoder calls (predict: 5x)")
    parser.add_argument("--everything-repeat", type=int, default=2, help="timed generate calls")
    parser.add_argument("--points-per-side", type=int, default=16, help="the generator's grid (official: 32)")
    parser.add_argument("--phase", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="samdeploy packages to time")
    parser.add_argument("--torch-allocator", choices=["tcmalloc", "glibc"], default=None)
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint (default: seeded random weights)")
    parser.add_argument("--package", type=Path, help="its exported fp32 package (default: exported here)")
    parser.add_argument(
        "--work-dir", type=Path, help="keeps the checkpoint and packages (default: a temp dir)"
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--torch-side", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.phase = [phase for phase in args.phase.split(",") if phase]
    args.variants = [variant for variant in args.variants.split(",") if variant]
    for phase in args.phase:
        if phase not in PHASES:
            parser.error(f"unknown phase '{phase}': choose from {', '.join(PHASES)}")
    for variant in args.variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant '{variant}': choose from {', '.join(VARIANTS)}")
    return args


def table(report: dict[str, Any]) -> list[str]:
    lines = [
        f"| {report['model']}, {report['threads']} threads | median | min | vs PyTorch fp32 | vs PyTorch bf16 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for phase in report["phases"]:
        rows = report[phase]
        fp32 = rows["pytorch eager fp32"]["median_ms"]
        bf16 = rows.get("pytorch bf16 autocast", {}).get("median_ms")
        for name, row in rows.items():
            extra = f" ({row['masks']} masks)" if "masks" in row else ""
            versus_bf16 = f"{bf16 / row['median_ms']:.2f}x" if bf16 else ""
            lines.append(
                f"| {phase}: {name}{extra} | {row['median_ms']:.1f} ms | {row['min_ms']:.1f} ms"
                f" | {fp32 / row['median_ms']:.2f}x | {versus_bf16} |"
            )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.torch_side:
        args.torch_side.write_text(json.dumps(torch_side(args)))
        return {}
    from samdeploy.cli.bench import machine_info

    def log(text: str) -> None:
        print(f"[bench_sam2] {text}", file=sys.stderr, flush=True)

    allocator = args.torch_allocator or ("tcmalloc" if any(Path(p).exists() for p in TCMALLOC) else "glibc")
    with tempfile.TemporaryDirectory(prefix="bench-sam2-") as tmp:
        args.work_dir = args.work_dir or Path(tmp)
        args.work_dir.mkdir(parents=True, exist_ok=True)
        packages = prepare_packages(args, log)
        log(f"PyTorch side ({allocator}): {', '.join(args.phase)}")
        theirs = run_torch_side(args, allocator)
        log(f"samdeploy side: {', '.join(args.variants)}")
        ours = samdeploy_side(args, packages)
        report: dict[str, Any] = {
            "model": f"sam2.1_hiera_{args.size}",
            "weights": args.checkpoint.name if args.checkpoint.parent != args.work_dir else "random (seed 0)",
            "image": list(bench_image().shape),
            "threads": args.threads,
            "points_per_side": args.points_per_side,
            "torch_allocator": allocator,
            "machine": machine_info(),
            "command": "benchmarks/bench_sam2.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "phases": args.phase,
            "accuracy": {
                variant: accuracy(package) for variant, package in packages.items() if accuracy(package)
            },
        }
        for phase in args.phase:
            report[phase] = {**theirs[phase], **ours[phase]}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{report['model']}.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(table(report)))
    for variant, figures in report["accuracy"].items():
        if figures:
            worst = ", ".join(f"{key} {value:.5f}" for key, value in figures["worst"].items())
            print(f"{variant}: {'passes' if figures['passed'] else 'misses'} the bar: {worst}")
    return report


if __name__ == "__main__":
    main()
