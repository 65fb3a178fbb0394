"""Issue 20's check of the CPU at hand, in one command: what the per-CPU table of docs/performance.md quotes.

The machines under this project change kind between sessions, and each kind is judged on its own
numbers. This runs, each in a process of its own, the measurements that table is made of, with the
options the docs' runs use, into ``benchmarks/results/<cpu-kind>/<run>/``:

1. ``bench_sam.py``: the fp32 package, fp32-openvino (OpenVINO installed), the package
   ``--precision auto`` picks on this CPU and the other fast packages it could have picked, against
   PyTorch eager and bf16 autocast (CPUs with native bf16) or torch.compile (the others, where
   PyTorch's bf16 is emulated and its best is fp32); PyTorch in a process of its own under tcmalloc
   where it is installed. ``vit_b.md``, ``.json``.
2. ``bench_encoders.py``: the fp32 encoders alone, alternating, with the GEMM peak each round and a
   profile by operator: the fp32 share of the peak. ``encoders.json``.
3. ``bench_predict.py``: each package's one-point click alone, back to back and after half a second
   of idle (a person's clicks): ``predict-alone-<package>.json``, ``predict-idle0.5-<package>.json``.
4. ``bench_attention_bias.py`` (vit_b, OpenVINO installed): what SAM's relative-position bias costs
   OpenVINO's fused attention on one global block, in f32 and (native bf16) bf16: the cost that holds
   the fp32 share of the peak and the bf16 package back on xeon-amx. ``attention-bias.json``.
5. ``bench_decoder_fusion.py`` (OpenVINO and native bf16): the click of the bf16 package ``--precision
   auto`` picks (or bf16) with its decoders' attention unfused, as packages make it, and fused by
   OpenVINO, each alone in turns: whether the unfused form wins on this CPU too.
   ``decoder-fusion.json``.
6. ``bench_encoders.py`` on each fast package alone, a process each, three turns in rotating order:
   whether ``--precision auto`` picked the fastest (packages alternating in one process evict each
   other's weights from the caches, which favours the smaller ones). ``fast-alone-<variant>-<turn>.json``,
   and their summary ``fast-alone.json``: each package's median over the turns, the fastest, and
   whether it is auto's choice.

    .venv/bin/python benchmarks/check_cpu.py --workdir /work/scratch/models     # 10-20 min for vit_b on 2 cores
    .venv/bin/python benchmarks/check_cpu.py --workdir models --dry-run          # the commands, nothing run

The random-weight checkpoint and its packages are kept in ``--workdir`` and reused by later runs.
Nothing else should run on the machine meanwhile: every step is a benchmark. Needs the ``export``
extra (PyTorch and segment-anything) for the reference side.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_sam import TCMALLOC  # noqa: E402  (a sibling script, not a package)

from samdeploy.cli.bench import CLICK_IDLE_S as IDLE_S  # noqa: E402  (the pause `samdeploy bench` uses too)

# Turns of step 6: each fast package's encoder alone, once per turn.
CONTEST_TURNS = 3


@dataclass(frozen=True)
class Machine:
    """What the plan depends on: the CPU's kind, whether it multiplies bf16 natively, what
    ``--precision auto`` picks on it, and which of OpenVINO and tcmalloc are installed."""

    kind: str
    native_bf16: bool
    auto: str
    openvino: bool
    tcmalloc: bool


def this_machine() -> Machine:
    from samdeploy.cpu import auto_precision, has_native_bf16
    from samdeploy.engine.backends import available_backends

    choice = auto_precision()
    return Machine(
        kind=choice.cpu.kind,
        native_bf16=has_native_bf16(choice.cpu.flags),
        auto=choice.precision,
        openvino="openvino" in available_backends(),
        tcmalloc=any(Path(path).exists() for path in TCMALLOC),
    )


def plan(
    machine: Machine,
    workdir: Path,
    run: str,
    model_type: str = "vit_b",
    threads: int = 2,
    results: Path | None = None,
) -> tuple[Path, list[list[str]]]:
    """The results folder (``results``, default ``benchmarks/results/<kind>/<run>``) and the
    commands of a check on ``machine``, in order."""
    results = results or ROOT / "benchmarks" / "results" / machine.kind / run

    def script(name: str, *args: object) -> list[str]:
        return [sys.executable, str(HERE / f"{name}.py"), *map(str, args)]

    package = workdir / f"{model_type}-seed0"
    clicked = list(dict.fromkeys(["fp32"] + (["fp32-openvino"] if machine.openvino else []) + [machine.auto]))
    fast = raced(machine)
    variants = list(dict.fromkeys(clicked + fast))
    sam = script("bench_sam", "--model-type", model_type, "--workdir", workdir)
    sam += ["--threads", str(threads), "--allocator", "glibc"]
    sam += ["--torch-allocator", "tcmalloc" if machine.tcmalloc else "glibc"]
    sam += ["--variants", ",".join(variants), "--repeat", "3", "--stream-images", "1"]
    sam += ["--everything-points", "0", "--output-dir", str(results)]
    # Without native bf16, PyTorch's autocast is emulated (minutes a call) and torch.compile is its best.
    sam += ["--bf16-rounds", "3"] if machine.native_bf16 else ["--bf16-rounds", "0", "--torch-compile"]
    folders = {
        variant: package if variant == "fp32" else workdir / f"{package.name}-{variant}"
        for variant in variants
    }
    fp32 = [folders[v] for v in ("fp32-openvino", "fp32") if v in folders]
    encoders = script("bench_encoders", *fp32, "--threads", threads)
    encoders += ["--rounds", "3", "--peak", "--ops", "--json", str(results / "encoders.json")]
    commands = [sam, encoders]
    for folder in (folders[variant] for variant in clicked):
        click = script("bench_predict", folder, "--threads", threads)
        commands.append(
            click + ["--rounds", "40", "--json", str(results / f"predict-alone-{folder.name}.json")]
        )
        idle = ["--rounds", "30", "--idle", str(IDLE_S)]
        commands.append(click + idle + ["--json", str(results / f"predict-idle{IDLE_S}-{folder.name}.json")])
    if machine.openvino and model_type == "vit_b":  # the benchmark's block is vit_b's
        precisions = ["f32", "bf16"] if machine.native_bf16 else ["f32"]
        bias = script("bench_attention_bias", "--threads", threads, "--precision", *precisions)
        commands.append(bias + ["--json", str(results / "attention-bias.json")])
    # the decoders of the packages that run on OpenVINO (a random tiny model's bf16 package misses
    # the accuracy bar: its logits sit near 0)
    if machine.openvino and machine.native_bf16 and model_type != "tiny":
        precision = machine.auto if machine.auto in ("bf16", "int8-bf16") else "bf16"
        fusion = script("bench_decoder_fusion", package, "--workdir", workdir, "--precision", precision)
        commands.append(fusion + ["--threads", str(threads), "--json", str(results / "decoder-fusion.json")])
    for turn in range(1, CONTEST_TURNS + 1):
        for variant in fast[turn - 1 :] + fast[: turn - 1]:  # each turn starts with the next package
            alone = script("bench_encoders", folders[variant], "--threads", threads, "--rounds", 3)
            commands.append(alone + ["--json", str(results / f"fast-alone-{variant}-{turn}.json")])
    return results, commands


def fast_candidates(machine: Machine) -> list[str]:
    """The packages step 6 races, ``--precision auto``'s choice first: int8 everywhere; bf16 and
    int8-bf16 where OpenVINO runs bf16; fp32-openvino where OpenVINO is but bf16 is not native (the
    other fast package there: 1.29-1.34x slower than int8 on Zen 3)."""
    candidates = [machine.auto, "int8"]
    if machine.openvino:
        candidates += ["bf16", "int8-bf16"] if machine.native_bf16 else ["fp32-openvino"]
    return list(dict.fromkeys(c for c in candidates if c != "fp32"))


def raced(machine: Machine) -> list[str]:
    """The packages step 6 races on ``machine``: :func:`fast_candidates`, or none where there is only one."""
    fast = fast_candidates(machine)
    return fast if len(fast) > 1 else []


def contest(results: Path, machine: Machine) -> dict | None:
    """Step 6's summary from its reports in ``results`` (None without a contest): per package the
    median encoder time of each turn and their median, the fastest, and whether auto chose it."""
    fast = raced(machine)
    if not fast:
        return None
    turns: dict[str, list[float]] = {}
    for variant in fast:
        for turn in range(1, CONTEST_TURNS + 1):
            report = json.loads((results / f"fast-alone-{variant}-{turn}.json").read_text())
            (row,) = report["encoders"].values()
            turns.setdefault(variant, []).append(row["median_s"])
    medians = {variant: statistics.median(times) for variant, times in turns.items()}
    fastest = min(medians, key=medians.__getitem__)
    return {
        "auto": machine.auto,
        "median_s": medians,
        "turns_s": turns,
        "fastest": fastest,
        "auto_is_fastest": fastest == machine.auto,
        # None where auto's pick was not raced (a pick of fp32, which choose_precision never makes).
        "auto_over_fastest": medians[machine.auto] / medians[fastest] if machine.auto in medians else None,
    }


def contest_line(summary: dict) -> str:
    """The one line that sums up step 6, fastest package first."""
    times = ", ".join(f"{v} {t:.2f} s" for v, t in sorted(summary["median_s"].items(), key=lambda x: x[1]))
    over = summary["auto_over_fastest"]
    if summary["auto_is_fastest"]:
        verdict = "is the fastest"
    elif over is None:
        verdict = "was not raced"
    else:
        verdict = f"takes {over:.2f}x the time of {summary['fastest']}"
    return (
        f"fast packages alone (median of {CONTEST_TURNS} turns): {times}; auto's {summary['auto']} {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, required=True, help="where the checkpoint and packages are kept"
    )
    parser.add_argument(
        "--run", default=None, help="the results sub-folder (default: <today>-check, e.g. 2026-12-07-check)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="write here instead (default: benchmarks/results/<cpu-kind>/<run>)",
    )
    parser.add_argument("--model-type", default="vit_b", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    run = args.run or f"{datetime.date.today().isoformat()}-check"
    machine = this_machine()
    results, commands = plan(
        machine,
        args.workdir.resolve(),  # the steps run in the repository's root: paths must not be relative
        run,
        args.model_type,
        args.threads,
        args.results.resolve() if args.results else None,
    )
    print(
        f"{machine.kind}: native bf16 {'yes' if machine.native_bf16 else 'no'}, --precision auto picks"
        f" {machine.auto}, OpenVINO {'yes' if machine.openvino else 'no'}, tcmalloc"
        f" {'yes' if machine.tcmalloc else 'no'}; results in {results}",
        flush=True,
    )
    if not args.dry_run and results.is_dir() and any(results.iterdir()):
        print(
            f"error: {results} holds an earlier check: name another with --run or --results", file=sys.stderr
        )
        return 2
    for step, command in enumerate(commands, 1):
        print(f"[{time.strftime('%H:%M:%S')}] {step}/{len(commands)}: {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        results.mkdir(parents=True, exist_ok=True)
        if subprocess.run(command, cwd=ROOT, check=False).returncode != 0:
            print(f"error: step {step} failed; the steps before it are in {results}", file=sys.stderr)
            return 1
    if not args.dry_run:
        summary = contest(results, machine)
        if summary:
            (results / "fast-alone.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(contest_line(summary))
        written = ", ".join(sorted(path.name for path in results.iterdir()))
        print(f"[{time.strftime('%H:%M:%S')}] done: {results}: {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
