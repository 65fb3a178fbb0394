"""``samdeploy bench``: how fast a model package runs on this machine. Never imports torch.

    samdeploy bench [--model models/sam_vit_b] [--device cpu] [--threads 2] [--repeat 3] [--json bench.json]

Measures what a deployment needs to know of the runtime: model load time and peak memory (in a fresh process),
encoder latency (``set_image`` with the embedding cache off), decoder + post-processing latency per
prompt kind (one point, five points, a box, a batch of 16 boxes), end-to-end ``segment`` of an
image file, segment-everything, the throughput of a stream of images in each executor mode, the
time per node, and the encoder's achieved GFLOP/s against this machine's measured fp32
matrix-multiply peak.

The same functions drive ``benchmarks/bench_sam.py``, which adds the official PyTorch predictor
side by side.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from samdeploy.cli.app import app
from samdeploy.cli.options import BackendOption, DeviceOption, ModelOption, resolve_device
from samdeploy.cpu import cpu_info

MODES = ("sequential", "task", "pipeline")
BENCH_IMAGE_SIZE = (768, 1024)  # H, W: a 4:3 photo, resized to the encoder's side like any other
CLICK_IDLE_S = 0.5  # the pause before each click of the idle-click figure
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")


# ----------------------------------------------------------------------------- inputs


def bench_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A real-looking HxWx3 uint8 RGB picture: gradients, discs of colour and noise (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], -1)
    for _ in range(6):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(max(2, min(height, width) // 16), max(3, min(height, width) // 3))
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.integers(0, 256, 3)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def prompt_cases(height: int, width: int) -> dict[str, dict[str, Any]]:
    """The benchmarked prompt kinds as ``SamPredictor.predict`` keyword arguments (pixels, XY)."""
    rng = np.random.default_rng(1)
    points = np.stack([rng.uniform(0, width, 5), rng.uniform(0, height, 5)], 1)
    x0 = rng.uniform(0, width / 2, 16)
    y0 = rng.uniform(0, height / 2, 16)
    boxes = np.stack([x0, y0, x0 + width / 3, y0 + height / 3], 1)
    return {
        "1 point": {"point_coords": points[:1], "point_labels": np.array([1])},
        "5 points": {"point_coords": points, "point_labels": np.array([1, 1, 0, 1, 0])},
        "box": {"box": boxes[0], "multimask_output": False},
        "16 boxes": {"box": boxes, "multimask_output": False},
    }


# ----------------------------------------------------------------------------- measuring


def timed(fn: Callable[[], Any], repeat: int, warmup: int = 1, idle_s: float = 0.0) -> dict[str, float]:
    """Median, best and worst wall time of ``fn`` in milliseconds over ``repeat`` runs after ``warmup``;
    ``idle_s``: seconds slept before each timed run (not timed)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeat)):
        if idle_s:
            time.sleep(idle_s)
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return {
        "median_ms": statistics.median(samples),
        "best_ms": min(samples),
        "worst_ms": max(samples),
        "runs": len(samples),
    }


def interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int, warmup: int = 1, settle_s: float = 0.0
) -> dict[str, dict[str, float]]:
    """Like :func:`timed` for several functions, run round-robin so background load hits all alike.

    Adds ``ratio_to_first``: the median over rounds of (first function's time / this one's),
    the figure that survives a noisy machine best. ``settle_s`` idles before each timed call, so
    that thread pools still spinning after the previous call (OpenMP, ONNX Runtime, BLAS wait
    for more work for a while) do not run into the next one: for calls of tens of milliseconds.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeat)):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) * 1e3)
    first = samples[next(iter(fns))]
    return {
        name: {
            "median_ms": statistics.median(values),
            "best_ms": min(values),
            "worst_ms": max(values),
            "runs": len(values),
            "ratio_to_first": statistics.median(a / b for a, b in zip(first, values, strict=True)),
        }
        for name, values in samples.items()
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux: ``VmHWM`` of /proc/self/status, this program's own high-water mark (``ru_maxrss`` would
    carry the parent's peak over into a freshly started child). Elsewhere ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, SIMD flags that matter for inference, load average and library versions;
    ``cpu_info``: the CPU's kind (``zen4``, ...), vendor, family and model (:mod:`samdeploy.cpu`)."""
    cpu = cpu_info()
    return {
        "cpu": cpu.model_name,
        "cpu_info": cpu.to_json(),
        "cores": os.cpu_count(),
        "simd": [flag for flag in SIMD_FLAGS if flag in cpu.flags],
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {
            dist: _version(dist)
            for dist in ("samdeploy", "onnxruntime", "openvino", "numpy", "torch", "segment-anything")
            if _version(dist)
        },
    }


def gemm_peak_gflops(threads: int, size: int = 2048, runs: int = 6) -> dict[str, Any]:
    """Best fp32 matrix-multiply rate on ``threads`` threads, GFLOP/s: ONNX Runtime's GEMM (MLAS)
    when the ``onnx`` package is there to build the one-node model, else numpy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(_matmul_model(b), options, providers=["CPUExecutionProvider"])

        def run() -> None:
            session.run(None, {"x": a})

        library = "onnxruntime MatMul"
    except ImportError:

        def run() -> None:
            np.matmul(a, b)

        library = "numpy matmul"
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return {"gflops": 2 * size**3 / best / 1e9, "library": library, "size": size}


def _matmul_model(weight: np.ndarray) -> bytes:
    """A one-node ONNX model ``y = x @ weight`` (needs the ``onnx`` package)."""
    from onnx import TensorProto, helper, numpy_helper

    n = weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def encoder_gflop(architecture: dict[str, Any]) -> float:
    """Floating-point operations of one image-encoder forward pass (a multiply-add counts 2), GFLOP.

    Counted from the architecture in the manifest: patch embedding, per block the qkv / proj
    projections (on window-padded tokens for windowed blocks, as SAM computes them), attention
    (QK^T and AV), the decomposed relative-position terms and the MLP, then the neck. Matches
    PyTorch's ``FlopCounterMode`` (972 GFLOP for vit_b).
    """
    dim = int(architecture["encoder_embed_dim"])
    depth = int(architecture["encoder_depth"])
    global_blocks = set(architecture.get("encoder_global_attn_indexes", []))
    window = int(architecture.get("window_size", 14))
    patch = int(architecture.get("patch_size", 16))
    out = int(architecture.get("prompt_embed_dim", 256))
    mlp = int(dim * float(architecture.get("mlp_ratio", 4.0)))
    grid = int(architecture["image_size"]) // patch
    tokens = grid * grid
    macs = tokens * dim * 3 * patch * patch  # patch embedding
    for block in range(depth):
        if block in global_blocks or window == 0:
            side, windows = grid, 1
        else:
            padded = -(-grid // window) * window
            side, windows = window, (padded // window) ** 2
        n = side * side  # tokens per attention window
        macs += windows * n * dim * 4 * dim  # qkv (3 dim) and proj (dim)
        macs += windows * 2 * n * n * dim  # QK^T and AV over all heads
        macs += windows * 2 * n * side * dim  # decomposed rel-pos: q . R_h and q . R_w
        macs += tokens * 2 * dim * mlp  # MLP
    macs += tokens * dim * out + tokens * out * out * 9  # neck: 1x1 then 3x3 conv
    return 2 * macs / 1e9


def memory_probe(
    package: Path, threads: int, backend: str | None = None, providers: list[str] | None = None
) -> dict[str, float]:
    """Load time and peak RSS of a fresh process that loads ``package`` and serves every prompt kind."""
    code = (
        "import json, sys; from samdeploy.cli.bench import _probe_main; "
        f"print(json.dumps(_probe_main({str(package)!r}, {threads}, {backend!r}, {providers!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _probe_main(
    package: str, threads: int, backend: str | None, providers: list[str] | None = None
) -> dict[str, float]:
    import samdeploy

    image = bench_image(*BENCH_IMAGE_SIZE)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    model = samdeploy.load_model(package, backend=backend, providers=providers, threads=threads, cache_mb=0)
    load_s = time.perf_counter() - start
    from samdeploy.loading import predictor_for

    predictor = predictor_for(model)
    predictor.set_image(image)
    for case in prompt_cases(*image.shape[:2]).values():
        predictor.predict(**case)
    return {"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "interpreter_rss_mb": baseline}


# ----------------------------------------------------------------------------- the benchmark


def bench_package(
    package: str | Path,
    threads: int = 0,
    repeat: int = 3,
    stream_images: int = 4,
    backend: str | None = None,
    everything_points: int = 16,
    memory: bool = True,
    peak: bool = True,
    log: Callable[[str], None] = lambda _: None,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Measure a package on this machine; returns the report (see the module docs for its parts).

    ``threads`` 0 means all cores. ``repeat`` timed runs per figure (prompts get 5x as many);
    ``stream_images`` images per executor mode; ``everything_points`` the points per side of the
    segment-everything run (0 skips it); ``memory`` runs the fresh-process load/RSS probe; ``peak``
    measures the GEMM peak; ``providers`` ONNX Runtime execution providers (None: the CPU).
    """
    import samdeploy
    from samdeploy.engine import Profile
    from samdeploy.sam.graphs import segment_files_graph
    from samdeploy.sam.prompts import validate_prompt

    package = Path(package)
    threads = threads or os.cpu_count() or 1
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "threads": threads,
        "backend": backend,
        "package": str(package),
    }
    model = samdeploy.load_model(package, backend=backend, providers=providers, threads=threads, cache_mb=0)
    report["backend"] = model.backend_summary
    report["model_type"] = model.package.model_type
    report["precision"] = model.package.precision
    image = bench_image(*BENCH_IMAGE_SIZE)
    cases = prompt_cases(*image.shape[:2])
    from samdeploy.loading import mask_generator_for, predictor_for

    predictor = predictor_for(model)

    log("encoder")
    latency: dict[str, dict[str, float]] = {
        "encoder (set_image)": timed(lambda: predictor.set_image(image), repeat)
    }
    for name, case in cases.items():
        log(f"predict: {name}")
        latency[f"predict: {name}"] = timed(lambda case=case: predictor.predict(**case), repeat * 5)
    # A person's clicks come seconds apart, and meanwhile the host's other work empties the caches:
    # the click as it is felt is slower than one of a tight loop.
    log(f"predict: 1 point, after {CLICK_IDLE_S:g} s idle")
    latency[f"predict: 1 point, after {CLICK_IDLE_S:g} s idle"] = timed(
        lambda: predictor.predict(**cases["1 point"]), repeat * 5, idle_s=CLICK_IDLE_S
    )

    log("segment (file -> masks)")
    with tempfile.TemporaryDirectory(prefix="samdeploy-bench-") as tmp:
        from PIL import Image

        path = Path(tmp) / "photo.png"
        Image.fromarray(image).save(path)
        graph = segment_files_graph(model.graph, max_pixels=None)
        prompt = validate_prompt(**cases["1 point"], mask_input_size=model.mask_input_size)
        inputs = {"path": str(path), "prompt": prompt, "multimask_output": True, "return_logits": False}
        latency["segment (file, 1 point)"] = timed(
            lambda: graph.run(inputs, executor=model.executor), max(1, repeat - 1), warmup=0
        )
    report["latency"] = latency

    if everything_points:
        log(f"segment everything ({everything_points}x{everything_points} points)")
        generator = mask_generator_for(model, points_per_side=everything_points)
        records: list[Any] = []

        def everything() -> None:
            records[:] = generator.generate(image)

        report["everything"] = {
            "points_per_side": everything_points,
            **timed(everything, 1, warmup=0),
            "masks": len(records),
        }

    log("per-node profile")
    profile = Profile()
    predictor.profile = profile
    for _ in range(max(1, repeat - 1)):
        predictor.set_image(image)
        predictor.predict(**cases["1 point"])
    predictor.profile = None
    report["nodes"] = [
        {"node": s.node, "count": s.count, "mean_ms": s.mean_ms, "p95_ms": s.p95_ms} for s in profile.stats()
    ]
    model.close()

    log("streams")
    report["stream"] = stream_throughput(package, threads, stream_images, backend, providers)
    encoder_ms = latency["encoder (set_image)"]["median_ms"]
    report["stream"]["encoder_bound_images_per_s"] = 1e3 / encoder_ms

    # The FLOP count knows SAM's ViT; a SAM 2 package's Hiera encoder is reported without it.
    gflop = None if model.package.is_sam2 else encoder_gflop(model.package.manifest["architecture"])
    report["encoder"] = {"gflop": gflop, "gflops": gflop / encoder_ms * 1e3 if gflop else None}
    if peak:
        log("GEMM peak")
        report["encoder"]["gemm_peak"] = gemm_peak_gflops(threads)
    if memory:
        log("load time and peak memory (fresh process)")
        report["memory"] = memory_probe(package, threads, backend, providers)
    report["machine"]["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def stream_throughput(
    package: Path,
    threads: int,
    count: int,
    backend: str | None = None,
    providers: list[str] | None = None,
) -> dict[str, Any]:
    """Images per second through the five-node graph (one point per image) in each executor mode."""
    import samdeploy
    from samdeploy.sam.prompts import validate_prompt

    images = [bench_image(*BENCH_IMAGE_SIZE, seed=seed) for seed in range(max(1, count))]
    height, width = BENCH_IMAGE_SIZE
    result: dict[str, Any] = {"images": len(images)}
    for mode in MODES:
        model = samdeploy.load_model(
            package, backend=backend, providers=providers, mode=mode, threads=threads, cache_mb=0
        )
        prompt = validate_prompt(
            np.array([[width / 2, height / 2]]), np.array([1]), mask_input_size=model.mask_input_size
        )
        items = [
            {"image": im, "prompt": prompt, "multimask_output": True, "return_logits": False} for im in images
        ]
        model.graph.run(items[0], executor=model.executor)  # warm up outside the clock
        start = time.perf_counter()
        done = sum(1 for r in model.graph.stream(items, executor=model.executor) if r.error is None)
        elapsed = time.perf_counter() - start
        model.close()
        if done != len(items):
            raise RuntimeError(f"{mode} stream: {len(items) - done} of {len(items)} images failed")
        result[mode] = done / elapsed
    return result


# ----------------------------------------------------------------------------- output


def format_report(report: dict[str, Any]) -> str:
    """The samdeploy-only report as a markdown table."""
    m = report["machine"]
    lines = [
        f"{report['model_type']} ({report['precision']}), {report['backend']}, {report['threads']} threads;"
        f" {m['cpu']}, {m['cores']} cores ({', '.join(m['simd']) or 'no AVX'}); load average"
        f" {m['loadavg'][0]:.1f}"
        if m.get("loadavg")
        else "",
        "",
        "| what | median | best |",
        "| --- | ---: | ---: |",
    ]
    for name, row in report["latency"].items():
        lines.append(f"| {name} | {row['median_ms']:.1f} ms | {row['best_ms']:.1f} ms |")
    if "everything" in report:
        e = report["everything"]
        lines.append(
            f"| segment everything ({e['points_per_side']}² points, {e['masks']} masks) |"
            f" {e['median_ms']:.0f} ms | {e['best_ms']:.0f} ms |"
        )
    if "memory" in report:
        lines.append(f"| load | {report['memory']['load_s'] * 1e3:.0f} ms | |")
        lines.append(f"| peak RSS serving prompts | {report['memory']['peak_rss_mb']:.0f} MB | |")
    stream = report["stream"]
    lines += [
        "",
        "Stream of images (images/s): "
        + ", ".join(f"{mode} {stream[mode]:.3f}" for mode in MODES)
        + f"; encoder-bound limit {stream['encoder_bound_images_per_s']:.3f}.",
    ]
    enc = report["encoder"]
    if enc["gflop"] is None:
        text = "Encoder: no FLOP count for a SAM 2 (Hiera) package"
    else:
        text = f"Encoder: {enc['gflop']:.1f} GFLOP per image, {enc['gflops']:.1f} GFLOP/s achieved"
    if "gemm_peak" in enc and enc["gflops"] is not None:
        peak = enc["gemm_peak"]["gflops"]
        text += f"; measured fp32 GEMM peak {peak:.1f} GFLOP/s ({enc['gflops'] / peak:.0%} of it)"
    lines += [text + ".", "", "| node | runs | mean | p95 |", "| --- | ---: | ---: | ---: |"]
    lines += [
        f"| {r['node']} | {r['count']} | {r['mean_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        for r in report["nodes"]
    ]
    return "\n".join(lines)


@app.command("bench")
def bench(
    model: ModelOption = None,
    threads: Annotated[int, typer.Option(min=0, metavar="N", help="intra-op threads (0: all cores)")] = 0,
    repeat: Annotated[int, typer.Option(min=1, metavar="N", help="timed runs per figure (prompts: 5x)")] = 3,
    stream_images: Annotated[int, typer.Option(min=1, metavar="N", help="images per executor mode")] = 4,
    everything_points: Annotated[
        int, typer.Option(min=0, metavar="N", help="points per side for segment-everything (0 skips it)")
    ] = 16,
    device: DeviceOption = None,
    backend: BackendOption = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="also write the report as JSON")
    ] = None,
) -> None:
    """Measure a model package on this machine: latency per step, streams, memory, GFLOP/s."""
    from rich.console import Console

    from samdeploy.package import ModelPackage
    from samdeploy.sam.model import DEFAULT_MODEL

    package = model or DEFAULT_MODEL
    ModelPackage.load(package)  # a clear one-line error for a bad folder, before anything runs
    backend, providers = resolve_device(device, backend)
    console = Console()
    with console.status("benchmarking") as status:
        report = bench_package(
            package,
            threads=threads,
            repeat=repeat,
            stream_images=stream_images,
            backend=backend,
            everything_points=everything_points,
            log=lambda step: status.update(f"benchmarking: {step}"),
            providers=providers,
        )
    console.print(format_report(report), highlight=False, soft_wrap=True)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_path}", highlight=False)
