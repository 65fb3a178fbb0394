"""The click on a bf16 package with its decoders' attention fused by OpenVINO, and unfused.

bf16 and int8-bf16 packages multiply their decoders' soft-max by the image's values as
``(V^T P^T)^T`` (``samdeploy.export.decoder_attention``), so that OpenVINO runs those products as
plain matrix products instead of fusing each ``MatMul -> Softmax -> MatMul`` into its attention
kernel: on the AMX Xeon the fused kernel ran these few-row chains without AMX, and the click got
1.12-1.34x faster unfused. Whether that holds on a CPU without AMX (Zen 4, Zen 5) is what this
measures there: it makes the package from an fp32 one (``optimize_package``, unfused), a copy of it
with the source's decoders as exported (fused), and times each package's one-point click alone in a
process of its own (``bench_predict.py``), the two forms in turn for ``--turns`` turns.

    .venv/bin/python benchmarks/bench_decoder_fusion.py models/vit_b-seed0 --workdir models --json fusion.json

Prints each form's click per turn and the median over turns of fused / unfused (above 1: unfused is
faster). Needs OpenVINO and a CPU that multiplies bf16 natively; the packages are kept in
``--workdir`` (``<source>-<precision>-unfused`` and ``-fused``) and reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FORMS = ("fused", "unfused")


def make_packages(source: Path, workdir: Path, precision: str, log=print) -> dict[str, Path]:
    """The unfused package (``optimize_package``) and its fused copy, made in ``workdir`` when missing."""
    from samdeploy.export.exporter import move_into_place, new_staging
    from samdeploy.export.precision import optimize_package
    from samdeploy.package import ENCODER, ModelPackage, describe_files, write_manifest

    unfused = workdir / f"{source.name}-{precision}-unfused"
    fused = workdir / f"{source.name}-{precision}-fused"
    if not (unfused / "model.json").exists():
        log(f"making the {precision} package from {source}")
        optimize_package(source, unfused, precision, check_images=1, measure_runs=1, force=True)
    if not (fused / "model.json").exists():
        log("copying it with the source's decoders as exported")
        staging = new_staging(fused)
        shutil.copytree(unfused, staging, dirs_exist_ok=True)
        original = ModelPackage.load(source)
        manifest = json.loads((staging / "model.json").read_text())
        for role, entry in manifest["models"].items():
            if role != ENCODER:
                shutil.copy2(original.model_path(role), staging / entry["file"])
        manifest["files"] = describe_files(staging, list(manifest["files"]))
        precision_info = manifest["export"]["precision"]
        precision_info["transforms"] = [
            t for t in precision_info["transforms"] if not t.startswith("decoders:")
        ]
        precision_info["decoder"] = "fp32 (copied)"
        write_manifest(staging, manifest)
        move_into_place(staging, fused)
    return {"fused": fused, "unfused": unfused}


def click_ms(package: Path, rounds: int, threads: int) -> float:
    """Median one-point click of ``package`` alone, in a process of its own (``bench_predict.py``)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "predict.json"
        command = [sys.executable, str(HERE / "bench_predict.py"), str(package), "--rounds", str(rounds)]
        command += ["--threads", str(threads), "--json", str(report)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(report.read_text())[str(package)]["median_ms"]


def compare(packages: dict[str, Path], turns: int, rounds: int, threads: int, log=print) -> dict:
    """Each form's click per turn (the forms in turn, starting with the other one each turn) and the
    median over turns of fused / unfused."""
    clicks: dict[str, list[float]] = {form: [] for form in FORMS}
    for turn in range(turns):
        for form in FORMS[turn % 2 :] + FORMS[: turn % 2]:
            clicks[form].append(click_ms(packages[form], rounds, threads))
            log(f"turn {turn + 1}: {form} {clicks[form][-1]:.1f} ms")
    ratios = [f / u for f, u in zip(clicks["fused"], clicks["unfused"], strict=True)]
    return {
        "packages": {form: str(path) for form, path in packages.items()},
        "click_ms": clicks,
        "fused_over_unfused": statistics.median(ratios),
        "rounds": rounds,
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="an fp32 package (samdeploy export)")
    parser.add_argument("--workdir", type=Path, required=True, help="where the two packages are kept")
    parser.add_argument("--precision", choices=("bf16", "int8-bf16"), default="bf16")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=60, help="clicks per package and turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    from samdeploy.engine.backends import OpenVinoBackend, available_backends

    if "openvino" not in available_backends() or not OpenVinoBackend.supports_precision("bf16"):
        print("error: needs OpenVINO and a CPU that multiplies bf16 natively", file=sys.stderr)
        return 2
    if args.turns < 1 or args.rounds < 1:
        parser.error("--turns and --rounds must be at least 1")
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = compare(
        make_packages(args.source, args.workdir, args.precision), args.turns, args.rounds, args.threads
    )
    report["precision"] = args.precision
    print(f"fused / unfused click: {report['fused_over_unfused']:.3f} (median over {args.turns} turns)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
