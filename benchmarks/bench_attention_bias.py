"""What SAM's relative-position bias costs OpenVINO's fused attention kernel on this CPU.

One global-attention block of the vit_b encoder (12 heads over the 64x64 token grid, head size 64),
built directly with OpenVINO's operators and timed in several forms, alternating call by call:

* ``sam``: as the OpenVINO packages run it (``OPENVINO_ATTENTION_ROWS``-row query bands; each band's
  scores viewed as ``[heads, rows, 64, 64, 64]`` plus the per-row and the per-column term);
* ``sam-unbanded``: the same chain over all 4096 queries at once;
* ``sdpa``: OpenVINO's ``ScaledDotProductAttention`` operator with the two terms summed into its mask;
* ``one-term`` (not SAM: the column term only) and ``no-bias`` (not SAM: no bias), which measure what
  each term costs.

Prints each form's median time, its rate over the block's 51.5 GFLOP of products (vit_b), the median of the
per-round ratios against ``sam`` (above 1: faster), the largest difference from ``sam``'s output and
the kernels OpenVINO compiled the form into. About 10 seconds per precision on 2 cores; needs
OpenVINO and onnx (for the band height of samdeploy's packages), not PyTorch.

    .venv/bin/python benchmarks/bench_attention_bias.py
    .venv/bin/python benchmarks/bench_attention_bias.py --precision bf16 --rounds 10 --json bias.json
    .venv/bin/python benchmarks/bench_attention_bias.py --snippets-mode IGNORE_CALLBACK   # fuses more chains

The xeon-amx results and what they rule out are in docs/performance.md ("xeon-amx, a check of this
version").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from samdeploy.cpu import cpu_info, cpu_kind
from samdeploy.export.attention import OPENVINO_ATTENTION_ROWS

FORMS = ("sam", "sam-unbanded", "sdpa", "one-term", "no-bias")
# Forms that compute SAM's attention; the others leave out some of the bias on purpose.
EXACT = ("sam", "sam-unbanded", "sdpa")


def build(form: str, heads: int, grid: int, head_dim: int, rows: int):
    """The OpenVINO model of one form; inputs q, k, v ``[1, heads, grid², head_dim]`` and the two
    relative-position terms ``[1, heads, grid², grid]`` (rel_h over key rows, rel_w over key columns)."""
    import openvino as ov
    import openvino.opset13 as op

    tokens = grid * grid
    q, k, v = (op.parameter([1, heads, tokens, head_dim], np.float32, name=n) for n in "qkv")
    rel_h, rel_w = (op.parameter([1, heads, tokens, grid], np.float32, name=n) for n in ("rel_h", "rel_w"))
    params = [q, k, v, rel_h, rel_w]
    scale = op.constant(np.float32(head_dim**-0.5))

    def ints(values) -> object:
        return op.constant(np.array(values, dtype=np.int64))

    band_rows = rows if form == "sam" else grid
    if grid % band_rows:
        raise ValueError(f"the grid's {grid} rows do not split into bands of {band_rows}")
    bands = grid // band_rows
    band = band_rows * grid

    def split(x) -> list:
        return list(op.split(x, ints(2), bands).outputs()) if bands > 1 else [x]

    outputs = []
    k_t = op.transpose(k, ints([0, 1, 3, 2]))
    for q_b, h_b, w_b in zip(split(q), split(rel_h), split(rel_w), strict=True):
        if form == "sdpa":
            mask = op.add(
                op.reshape(h_b, ints([1, heads, band, grid, 1]), False),
                op.reshape(w_b, ints([1, heads, band, 1, grid]), False),
            )
            mask = op.reshape(mask, ints([1, heads, band, tokens]), False)
            outputs.append(op.scaled_dot_product_attention(q_b, k, v, mask, scale))
            continue
        scores = op.matmul(op.multiply(q_b, scale), k_t, False, False)
        if form != "no-bias":
            scores = op.reshape(scores, ints([heads, band_rows, grid, grid, grid]), False)
            if form != "one-term":
                scores = op.add(scores, op.reshape(h_b, ints([heads, band_rows, grid, grid, 1]), False))
            scores = op.add(scores, op.reshape(w_b, ints([heads, band_rows, grid, 1, grid]), False))
            scores = op.reshape(scores, ints([1, heads, band, tokens]), False)
        outputs.append(op.matmul(op.softmax(scores, -1), v, False, False))
    out = op.concat(outputs, 2) if len(outputs) > 1 else outputs[0]
    return ov.Model([out], params, form)


def kernels(compiled) -> dict[str, int]:
    """How many nodes of each kind (``Subgraph:jit_avx512_f32``, ...) OpenVINO compiled a model into."""
    counts: Counter[str] = Counter()
    for node in compiled.get_runtime_model().get_ops():
        info = node.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer in ("Input", "Output", "Const", "Reshape"):
            continue
        primitive = info["primitiveType"].astype(str) if "primitiveType" in info else "?"
        counts[f"{layer}:{primitive}"] += 1
    return dict(sorted(counts.items()))


def bench(
    precision: str,
    forms: list[str],
    rounds: int,
    threads: int,
    heads: int = 12,
    grid: int = 64,
    head_dim: int = 64,
    rows: int = OPENVINO_ATTENTION_ROWS,
    snippets_mode: str | None = None,
) -> dict:
    """Per form: ``median_ms``, ``best_ms``, ``gflops``, ``ratio_to_sam`` (median of per-round time
    ratios, ``sam``'s / this form's), ``max_diff_to_sam`` and ``kernels``."""
    import openvino as ov

    rows = min(rows, grid)
    config: dict[str, object] = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
        "PERFORMANCE_HINT": "LATENCY",
    }
    if snippets_mode:
        config["SNIPPETS_MODE"] = snippets_mode
    core = ov.Core()
    rng = np.random.default_rng(0)
    tokens = grid * grid
    # Magnitudes like a trained encoder's: unit q and k, bias terms of a few units.
    feeds = [rng.standard_normal((1, heads, tokens, head_dim), dtype=np.float32) for _ in range(3)]
    feeds += [2 * rng.standard_normal((1, heads, tokens, grid), dtype=np.float32) for _ in range(2)]
    order = ["sam"] + [form for form in forms if form != "sam"]
    requests: dict[str, Callable[[], np.ndarray]] = {}
    results: dict[str, dict] = {}
    for form in order:
        compiled = core.compile_model(build(form, heads, grid, head_dim, rows), "CPU", config)
        request = compiled.create_infer_request()
        requests[form] = lambda request=request: request.infer(feeds)[0]
        results[form] = {"kernels": kernels(compiled), "output": np.array(requests[form](), copy=True)}
    times: dict[str, list[float]] = {form: [] for form in order}
    for _ in range(rounds):
        for form in order:
            start = time.perf_counter()
            requests[form]()
            times[form].append(time.perf_counter() - start)
    gflop = 2 * 2 * heads * tokens * tokens * head_dim / 1e9
    reference = results["sam"]["output"]
    for form in order:
        row = results[form]
        row["max_diff_to_sam"] = float(np.abs(row.pop("output") - reference).max())
        row["exact_form"] = form in EXACT
        median = statistics.median(times[form])
        row.update(
            median_ms=1e3 * median,
            best_ms=1e3 * min(times[form]),
            gflops=gflop / median,
            ratio_to_sam=statistics.median(s / t for s, t in zip(times["sam"], times[form], strict=True)),
        )
    return {form: results[form] for form in order if form in forms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("f32", "bf16"), nargs="+", default=["f32", "bf16"])
    parser.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated, of {', '.join(FORMS)}")
    parser.add_argument(
        "--rounds", type=int, default=6, help="timed rounds after one warm-up call (default 6)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--grid", type=int, default=64, help="token grid side (default 64: vit_b at 1024 px)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument(
        "--snippets-mode", default=None, help="OpenVINO's SNIPPETS_MODE (e.g. IGNORE_CALLBACK)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    forms = [form.strip() for form in args.forms.split(",") if form.strip()]
    unknown = sorted(set(forms) - set(FORMS))
    if unknown or not forms:
        parser.error(
            f"--forms: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMS)}"
        )
    if args.rounds < 1 or args.grid < 1 or args.heads < 1:
        parser.error("--rounds, --grid and --heads must be at least 1")
    try:
        import openvino as ov
    except ImportError:
        print("error: OpenVINO is not installed (pip install 'samdeploy[openvino]')", file=sys.stderr)
        return 2
    cpu = cpu_info()
    kind = cpu_kind(cpu.vendor, cpu.family, cpu.model, cpu.model_name, cpu.flags)
    report: dict = {
        "cpu": cpu.model_name,
        "cpu_kind": kind,
        "openvino": ov.get_version(),
        "threads": args.threads,
        "grid": args.grid,
        "heads": args.heads,
        "snippets_mode": args.snippets_mode,
        "precisions": {},
    }
    print(f"{cpu.model_name} ({kind}), OpenVINO {ov.get_version()}, {args.threads} threads")
    for precision in args.precision:
        try:
            rows = bench(
                precision,
                forms,
                args.rounds,
                args.threads,
                args.heads,
                args.grid,
                snippets_mode=args.snippets_mode,
            )
        except (RuntimeError, ValueError) as error:
            print(f"error: {precision}: {str(error).strip().splitlines()[0]}", file=sys.stderr)
            return 2
        report["precisions"][precision] = rows
        print(
            f"\n{precision}: {'form':14s} {'median':>9s} {'best':>9s} {'GFLOP/s':>8s} {'vs sam':>7s} {'max diff':>9s}  kernels"
        )
        for form, row in rows.items():
            note = "" if row["exact_form"] else " (not SAM)"
            kinds = ", ".join(f"{n} {k}" for k, n in row["kernels"].items())
            print(
                f"{'':5s} {form:14s} {row['median_ms']:7.1f}ms {row['best_ms']:7.1f}ms {row['gflops']:8.1f}"
                f" {row['ratio_to_sam']:6.3f}x {row['max_diff_to_sam']:9.2e}  {kinds}{note}"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
