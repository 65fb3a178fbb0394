"""Image encoders on their backends, alternating call by call: which package is fastest on this CPU.

Each argument is a model package (its image encoder, on the backend and precision its manifest asks
for: OpenVINO f32 for ``fp32-openvino``) or an encoder ``.onnx`` file, optionally followed by
``@backend`` and ``,option=value`` pairs for that backend (``enc.onnx@openvino,quantization_group=768``;
a package's own runtime is replaced by what is given). After one warm-up call each, the encoders run
in turn, round after round, on the same random 1024x1024 input, so a host that changes speed during
the run slows them alike. Prints each one's median and best time, its speed-up over the first (the
median of per-round ratios, the first's time / this one's) and the cosine of its embedding to the
first's. With ``--peak``, ONNX Runtime's fp32 matrix-multiply peak is measured once per round too,
and each encoder's rate shown as a share of the best of them (issue 20's fp32 target). With
``--ops``, each encoder then runs once more under its runtime's profiler (ONNX Runtime's, or
OpenVINO's ``PERF_COUNT``) and the time of its last call is split by operator type: where the time
goes. An encoder named twice is timed twice (the second labelled with a '), a check of the noise.
No PyTorch needed.

    .venv/bin/python benchmarks/bench_encoders.py models/vit_b models/vit_b-int8 models/vit_b-fp32-openvino
    .venv/bin/python benchmarks/bench_encoders.py models/vit_b-int8 \\
        models/vit_b-int8/image_encoder.onnx@openvino --rounds 5 --peak --ops --json encoders.json

The GFLOP per image come from the first package's architecture (``--gflop`` for bare files).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.cli.bench import encoder_gflop, gemm_peak_gflops
from samdeploy.engine.backends import Backend, backend_class, create_backend
from samdeploy.errors import SamDeployError
from samdeploy.package import ModelPackage, TensorSpec


@dataclass
class Encoder:
    """One encoder to time: its file, where it runs, and (for a package) its architecture."""

    label: str
    path: Path
    backend: str
    options: dict[str, Any] = field(default_factory=dict)
    architecture: dict[str, Any] | None = None


def _value(text: str) -> Any:
    """An option's value: a whole number where it reads as one, else the text."""
    try:
        return int(text)
    except ValueError:
        return text


def parse_encoder(spec: str) -> Encoder:
    """``PATH[@BACKEND[,KEY=VALUE...]]`` as an :class:`Encoder` (ValueError on a malformed one)."""
    where, _, runtime = spec.partition("@")
    path = Path(where)
    backend, options, architecture = "onnxruntime", {}, None
    if path.is_dir():
        package = ModelPackage.load(path)
        architecture = package.manifest.get("architecture")
        own = package.runtime("image_encoder")
        backend = own.get("backend", backend)
        if "precision" in own:
            options["precision"] = own["precision"]
        path = package.encoder_path
    elif not path.is_file():
        raise ValueError(f"{where}: no such package folder or model file")
    if runtime:
        name, *pairs = runtime.split(",")
        backend, options = name, {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise ValueError(f"{spec}: backend options are KEY=VALUE, got '{pair}'")
            options[key] = _value(value)
    return Encoder(spec, path, backend, options, architecture)


def _feeds(inputs: tuple[TensorSpec, ...], image: np.ndarray) -> dict[str, np.ndarray]:
    """The encoder's one input, cut from ``image`` to the model's size (a tiny model's is smaller)."""
    (spec,) = inputs
    side = spec.shape[-1] if isinstance(spec.shape[-1], int) else image.shape[-1]
    return {spec.name: image[..., :side, :side]}


def run_encoders(
    encoders: list[Encoder], rounds: int, threads: int, peak: bool
) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Time ``encoders`` round-robin; returns ({label: figures}, the GEMM peaks measured)."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 1024, 1024)).astype(np.float32)
    runners: dict[str, tuple[Backend, dict[str, np.ndarray]]] = {}
    first: dict[str, np.ndarray] = {}
    for encoder in encoders:
        runner = create_backend(encoder.backend, encoder.path, threads=threads, **encoder.options)
        feeds = _feeds(runner.inputs, image)
        first[encoder.label] = next(iter(runner.run(feeds).values())).astype(np.float64).ravel()
        runners[encoder.label] = runner, feeds
    times: dict[str, list[float]] = {label: [] for label in runners}
    peaks: list[float] = []
    for _ in range(rounds):
        if peak:
            peaks.append(gemm_peak_gflops(threads)["gflops"])
        for label, (runner, feeds) in runners.items():
            start = time.perf_counter()
            runner.run(feeds)
            times[label].append(time.perf_counter() - start)
    base_label = encoders[0].label
    reference = first[base_label]
    results = {}
    for encoder in encoders:
        own, embedding = times[encoder.label], first[encoder.label]
        cosine = (
            float(embedding @ reference / (np.linalg.norm(embedding) * np.linalg.norm(reference)))
            if embedding.shape == reference.shape
            else None
        )
        results[encoder.label] = {
            "backend": encoder.backend,
            "options": encoder.options,
            "median_s": statistics.median(own),
            "best_s": min(own),
            # the first's time / this one's, per round: above 1 is faster than the first
            "ratio_to_first": statistics.median(b / a for a, b in zip(own, times[base_label], strict=True)),
            "cosine_to_first": cosine,
        }
    return results, peaks


def op_times(encoder: Encoder, threads: int, image: np.ndarray) -> dict[str, float]:
    """Seconds per operator type of one call of ``encoder`` (the second of two), under its runtime's
    profiler; OpenVINO's entries are its fused nodes (``Subgraph``: a fused chain, such as an
    attention band), labelled with the kernel that ran them."""
    totals: dict[str, float] = {}
    if encoder.backend == "openvino":
        import openvino as ov

        config: dict[str, Any] = {
            "PERF_COUNT": True,
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": encoder.options.get("precision", "f32"),
        }
        if "quantization_group" in encoder.options:
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = encoder.options["quantization_group"]
        request = ov.Core().compile_model(str(encoder.path), "CPU", config).create_infer_request()
        for _ in range(2):
            request.infer({0: image})
        for node in request.get_profiling_info():
            key = f"{node.node_type} ({node.exec_type})"
            totals[key] = totals.get(key, 0.0) + node.real_time.total_seconds()
    elif encoder.backend == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        with tempfile.TemporaryDirectory(prefix="samdeploy-ops-") as folder:
            options.profile_file_prefix = str(Path(folder) / "encoder")
            session = ort.InferenceSession(str(encoder.path), options, providers=["CPUExecutionProvider"])
            feeds = {session.get_inputs()[0].name: image}
            for _ in range(2):
                session.run(None, feeds)
            events = json.loads(Path(session.end_profiling()).read_text())
        last = max((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
        for event in events:
            if (
                event.get("cat") == "Node"
                and event["name"].endswith("_kernel_time")
                and event["ts"] >= last["ts"]
            ):
                op = event["args"]["op_name"]
                totals[op] = totals.get(op, 0.0) + event["dur"] / 1e6
    else:
        raise ValueError(f"--ops profiles onnxruntime and openvino encoders, not {encoder.backend}")
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "encoders", nargs="+", help="package folders or .onnx files, each PATH[@BACKEND[,K=V...]]"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peak", action="store_true", help="measure the fp32 GEMM peak each round")
    parser.add_argument("--gflop", type=float, default=None, help="GFLOP per image (default: from a package)")
    parser.add_argument("--ops", action="store_true", help="split each encoder's time by operator type")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    try:
        encoders = [parse_encoder(spec) for spec in args.encoders]
        labels: set[str] = set()
        for encoder in encoders:
            while encoder.label in labels:
                encoder.label += "'"
            labels.add(encoder.label)
        results, peaks = run_encoders(encoders, args.rounds, args.threads, args.peak)
    except (ValueError, SamDeployError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    architecture = next((e.architecture for e in encoders if e.architecture), None)
    gflop = args.gflop or (encoder_gflop(architecture) if architecture else None)
    best_peak = max(peaks) if peaks else None
    print(f"{'encoder':60s} {'median':>8s} {'best':>8s} {'speed-up':>9s} {'cosine':>9s}")
    for label, row in results.items():
        cosine = f"{row['cosine_to_first']:.6f}" if row["cosine_to_first"] is not None else "-"
        line = f"{label[-60:]:60s} {row['median_s']:7.2f}s {row['best_s']:7.2f}s {row['ratio_to_first']:8.3f}x {cosine:>9s}"
        if gflop:
            row["gflops"] = gflop / row["median_s"]
            line += f"  {row['gflops']:.1f} GFLOP/s"
            if best_peak:
                row["share_of_peak"] = row["gflops"] / best_peak
                line += f" ({row['share_of_peak']:.0%} of the peak)"
        print(line)
    if peaks:
        print(f"ONNX Runtime fp32 GEMM peak per round: {', '.join(f'{p:.1f}' for p in peaks)} GFLOP/s")
    if args.ops:
        image = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024)).astype(np.float32)
        for encoder in encoders:
            inputs, _ = backend_class(encoder.backend).read_specs(encoder.path)
            try:
                ops = op_times(encoder, args.threads, next(iter(_feeds(inputs, image).values())))
            except ValueError as error:
                print(f"error: {error}", file=sys.stderr)
                return 2
            results[encoder.label]["ops_s"] = ops
            total = sum(ops.values())
            print(f"\n{encoder.label}: {total:.2f} s in operators")
            for op, seconds in list(ops.items())[:12]:
                print(f"  {op:44s} {seconds:7.3f} s {100 * seconds / total:5.1f}%")
    if args.json:
        report = {"gflop": gflop, "gemm_peaks_gflops": peaks, "threads": args.threads, "encoders": results}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
