"""samdeploy against the official PyTorch ``SamPredictor``, side by side in one run.

Both sides get the same random weights, the same images and the same prompts, on the same
threads, and every comparison runs round-robin (A, B, A, B, ...), so the ratios hold even on a
noisy shared machine. Results go to the folder of the CPU they were measured on,
``benchmarks/results/<cpu-kind>/`` (``zen4``, ``zen3``, ``sapphirerapids``, ...: see
:func:`samdeploy.cpu.cpu_kind`; ``--run NAME`` adds a sub-folder): ``<model>.json``, ``<model>.md``
(a markdown report naming the CPU, its flags, its load and the versions) and a per-node time chart
``<model>-nodes.png``.

    .venv/bin/python benchmarks/bench_sam.py --model-type vit_b --threads 2
    .venv/bin/python benchmarks/bench_sam.py --model-type tiny --repeat 1      # a smoke run

The samdeploy side measures the package as exported (``fp32``: banded global attention, the
default), the same export with the attention as traced (``fp32-traced``, ``--attention-rows 0``),
and the ``fp32-openvino`` (the fp32 arithmetic, its encoder on OpenVINO), ``int8``, ``bf16`` and
``int8-bf16`` packages of ``samdeploy.export.precision``. The PyTorch side measures eager fp32, bf16 autocast
(on CPUs with native bf16, or with ``--bf16-rounds``: elsewhere it is emulated, minutes a call) and, with
``--torch-compile``, ``torch.compile``; when tcmalloc is installed (``apt-get install
libtcmalloc-minimal4``) the whole run is re-executed with it preloaded, PyTorch's best allocator
set-up (``--allocator glibc`` to compare without). ``--torch-allocator tcmalloc|glibc`` runs the
PyTorch side in a process of its own with that allocator instead: PyTorch with tcmalloc beside
OpenVINO (which aborts under tcmalloc), and no thread pool of one side spinning into the other's
calls. The docs' runs use it:

    .venv/bin/python benchmarks/bench_sam.py --threads 2 --torch-compile --torch-allocator tcmalloc \
        --variants fp32,fp32-traced,int8
    .venv/bin/python benchmarks/bench_sam.py --threads 2 --torch-compile --torch-allocator tcmalloc \
        --allocator glibc --variants fp32,int8,bf16,int8-bf16 --run openvino

Needs the ``export`` extra (PyTorch and segment-anything) for the reference side.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TCMALLOC = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
)
TINY = {
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [1],
    "image_size": 256,
    "window_size": 7,
}
SAMDEPLOY_VARIANTS = ("fp32", "fp32-traced", "int8", "fp32-openvino", "bf16", "int8-bf16")
# Idle time before each timed prompt call: thread pools spinning after one side's call (PyTorch's
# OpenMP, ONNX Runtime's, BLAS) otherwise take a core from the other side's next call.
SETTLE_S = 0.05
# Variants that run on OpenVINO (which aborts under a preloaded tcmalloc).
OPENVINO_VARIANTS = ("fp32-openvino", "bf16", "int8-bf16")
# Fast packages: held to the accuracy bar and compared with PyTorch bf16 autocast.
FAST_VARIANTS = ("int8", "bf16", "int8-bf16")

from samdeploy.cli.bench import (  # noqa: E402  (after the constants the docstring names)
    BENCH_IMAGE_SIZE,
    bench_image,
    encoder_gflop,
    gemm_peak_gflops,
    interleaved,
    machine_info,
    memory_probe,
    prompt_cases,
    stream_throughput,
)

# ----------------------------------------------------------------------------- the reference model


def sam_config(model_type: str) -> Any:
    from samdeploy.export import PRESETS, SamConfig

    return SamConfig.from_json(TINY) if model_type == "tiny" else PRESETS[model_type]


def load_reference(checkpoint: Path, config: Any) -> Any:
    from samdeploy.export import load_sam, load_state_dict

    return load_sam(load_state_dict(checkpoint), config).eval()


def torch_predict(predictor: Any, case: dict[str, Any]) -> None:
    """The official predictor; a batch of boxes goes through ``predict_torch`` as its README shows."""
    import torch

    box = case.get("box")
    if box is not None and np.ndim(box) == 2:
        boxes = predictor.transform.apply_boxes_torch(
            torch.as_tensor(box, dtype=torch.float), predictor.original_size
        )
        predictor.predict_torch(None, None, boxes=boxes, multimask_output=False)
    else:
        predictor.predict(**case)


def torch_encoder_gflop(sam: Any) -> float | None:
    """PyTorch's own count of the encoder's FLOPs, on meta tensors (no compute)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    try:
        encoder = copy.deepcopy(sam.image_encoder).to("meta")
        size = encoder.img_size
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            encoder(torch.zeros(1, 3, size, size, device="meta"))
        return counter.get_total_flops() / 1e9
    except Exception:  # an op without a meta kernel: the analytic count still stands
        return None


def torch_gemm_peak(threads: int, size: int = 2048, dtype: str = "float32") -> float:
    """Best ``torch.mm`` rate on ``threads`` threads, GFLOP/s; ``dtype="bfloat16"`` is the rate
    bf16 autocast's linear layers can reach (oneDNN: AVX512-BF16, or AMX where the CPU has it)."""
    import torch

    torch.set_num_threads(threads)
    a, b = (torch.randn(size, size).to(getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def openvino_gemm_peaks(threads: int, size: int = 2048, runs: int = 6) -> dict[str, float]:
    """Best OpenVINO matrix-multiply rates on ``threads`` threads, GFLOP/s (a multiply-add counts 2):
    at bf16 inference precision (``bf16``), and with the weight stored as int8 so that OpenVINO
    multiplies in int8 with the input quantized per row (``int8``), as the int8-bf16 package's
    linear layers run. The ceilings of the bf16 and int8-bf16 packages' arithmetic on this CPU."""
    import onnx

    from samdeploy.cli.bench import _matmul_model
    from samdeploy.engine.backends import create_backend
    from samdeploy.export.optimize import compress_weights_int8

    rng = np.random.default_rng(0)
    x = rng.standard_normal((size, size), dtype=np.float32)
    model = onnx.load_from_string(_matmul_model(rng.standard_normal((size, size), dtype=np.float32)))
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="samdeploy-gemm-") as tmp:
        for name, group in (("bf16", None), ("int8", size)):
            if group is not None:
                compress_weights_int8(model)
            path = Path(tmp) / f"{name}.onnx"
            onnx.save_model(model, str(path))
            options = {"precision": "bf16", "threads": threads}
            runner = create_backend(
                "openvino", path, **options, **({"quantization_group": group} if group else {})
            )
            runner.run({"x": x})
            best = float("inf")
            for _ in range(runs):
                start = time.perf_counter()
                runner.run({"x": x})
                best = min(best, time.perf_counter() - start)
            peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def torch_probe(checkpoint: str, config_json: str, threads: int) -> dict[str, float]:
    """Load time and peak RSS of the PyTorch side in this (fresh) process."""
    import torch
    from segment_anything import SamPredictor

    from samdeploy.cli.bench import peak_rss_mb
    from samdeploy.export import SamConfig

    torch.set_num_threads(threads)
    image = bench_image(*BENCH_IMAGE_SIZE)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    predictor = SamPredictor(load_reference(Path(checkpoint), SamConfig.from_json(json.loads(config_json))))
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        predictor.set_image(image)
        for case in prompt_cases(*image.shape[:2]).values():
            torch_predict(predictor, case)
    return {"load_s": load_s, "peak_rss_mb": peak_rss_mb(), "interpreter_rss_mb": baseline}


def run_torch_probe(checkpoint: Path, config: Any, threads: int) -> dict[str, float]:
    config_json = json.dumps(config.to_json())
    code = (
        f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_sam import torch_probe; "
        f"print(json.dumps(torch_probe({str(checkpoint)!r}, {config_json!r}, {threads})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"PyTorch memory probe failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class TorchSide:
    """Every timed PyTorch call of the run: the official predictor on the bench image and prompts."""

    def __init__(self, sam: Any, threads: int) -> None:
        import torch
        from segment_anything import SamPredictor as TorchPredictor

        torch.set_num_threads(threads)
        self.sam = sam
        self.reference = TorchPredictor(sam)
        self.image = bench_image(*BENCH_IMAGE_SIZE)
        self.cases = prompt_cases(*self.image.shape[:2])
        self.compiled: Any = None

    def encode(self) -> None:
        import torch

        with torch.inference_mode():
            self.reference.set_image(self.image)

    def encode_bf16(self) -> None:
        import torch

        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            self.reference.set_image(self.image)

    def compile(self) -> float:
        """torch.compile the encoder and run it once (the compilation); returns the seconds taken."""
        import torch

        self.compiled = torch.compile(self.sam.image_encoder)
        start = time.perf_counter()
        self.encode_compiled()
        return time.perf_counter() - start

    def encode_compiled(self) -> None:
        original = self.sam.image_encoder
        self.sam.image_encoder = self.compiled  # the official predictor calls model.image_encoder
        try:
            self.encode()
        finally:
            self.sam.image_encoder = original

    def predict(self, case: str) -> None:
        import torch

        with torch.inference_mode():
            torch_predict(self.reference, self.cases[case])

    def segment(self, photo: str) -> None:
        import torch
        from PIL import Image

        picture = np.asarray(Image.open(photo).convert("RGB"))
        with torch.inference_mode():
            self.reference.set_image(picture)
            self.reference.predict(**self.cases["1 point"])

    def everything(self, points: int) -> int:
        import torch
        from segment_anything import SamAutomaticMaskGenerator

        with torch.inference_mode():
            return len(SamAutomaticMaskGenerator(self.sam, points_per_side=points).generate(self.image))

    def stream(self, count: int) -> float:
        """Images per second of the predictor looping over ``count`` images, one point each."""
        import torch

        images = [bench_image(*BENCH_IMAGE_SIZE, seed=seed) for seed in range(count)]
        start = time.perf_counter()
        for picture in images:
            with torch.inference_mode():
                self.reference.set_image(picture)
                self.reference.predict(point_coords=np.array([[512.0, 384.0]]), point_labels=np.array([1]))
        return count / (time.perf_counter() - start)


_REPLY = "@torch-side "  # marks the worker's replies on its stdout (anything else printed is not one)


def torch_worker(checkpoint: str, config_json: str, threads: int) -> None:
    """Serve :class:`TorchSide` calls read as JSON lines from stdin (the ``--torch-allocator`` process)."""
    from samdeploy.export import SamConfig

    side = TorchSide(load_reference(Path(checkpoint), SamConfig.from_json(json.loads(config_json))), threads)
    print(_REPLY + json.dumps({"result": "ready"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": getattr(side, request["call"])(*request["args"])}
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(_REPLY + json.dumps(reply), flush=True)


class RemoteTorchSide:
    """:class:`TorchSide` in a process of its own, with its own allocator: PyTorch with tcmalloc
    while this process runs OpenVINO (which aborts under tcmalloc), and neither side's thread pool
    ever running beside the other's. A call costs a pipe round trip (tens of microseconds)."""

    def __init__(self, checkpoint: Path, config: Any, threads: int, allocator: str) -> None:
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if allocator == "tcmalloc":
            library = next((p for p in TCMALLOC if Path(p).exists()), None)
            if library is None:
                raise SystemExit("tcmalloc not found: apt-get install libtcmalloc-minimal4")
            env["LD_PRELOAD"] = library
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.bench_sam import torch_worker; "
            f"torch_worker({str(checkpoint)!r}, {json.dumps(config.to_json())!r}, {threads})"
        )
        self.allocator = allocator
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._reply()

    def _reply(self) -> Any:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(_REPLY):
                reply = json.loads(line[len(_REPLY) :])
                if "error" in reply:
                    raise RuntimeError(f"PyTorch worker: {reply['error']}")
                return reply["result"]
        raise RuntimeError(f"PyTorch worker exited ({self.process.wait()})")

    def call(self, name: str, *args: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"call": name, "args": list(args)}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or not hasattr(TorchSide, name):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=60)


# ----------------------------------------------------------------------------- the run


def prepare(args: argparse.Namespace, log: Callable[[str], None]) -> tuple[Any, Any, Path, dict[str, Path]]:
    """The reference model, its checkpoint, and the samdeploy packages to compare (built if missing)."""
    import torch

    from samdeploy.export import SamConfig, export_model, random_sam
    from samdeploy.export.precision import optimize_package
    from samdeploy.package import ModelPackage

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="samdeploy-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.package is not None:
        package = args.package
        config = SamConfig.from_json(ModelPackage.load(package).manifest["architecture"])
        if args.checkpoint is None:
            raise SystemExit("--package needs the --checkpoint it was exported from")
        checkpoint = args.checkpoint
        sam = load_reference(checkpoint, config)
    else:
        config = sam_config(args.model_type)
        checkpoint = workdir / f"{args.model_type}-seed{args.seed}.pth"
        package = workdir / f"{args.model_type}-seed{args.seed}"
        if checkpoint.exists():
            sam = load_reference(checkpoint, config)
        else:
            sam = random_sam(config, args.seed)
            torch.save(sam.state_dict(), checkpoint)
        if not (package / "model.json").exists():
            log(f"exporting {args.model_type} to {package}")
            export_model(checkpoint, package, force=True)
    from samdeploy.engine.backends import OpenVinoBackend, available_backends

    packages = {"fp32": package}
    for variant in args.variants:
        if variant == "fp32":
            continue
        if variant in OPENVINO_VARIANTS and "openvino" not in available_backends():
            log(f"skipping {variant}: OpenVINO is not installed (pip install 'samdeploy[openvino]')")
            continue
        if variant in OPENVINO_VARIANTS and "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
            # OpenVINO 2026.4 aborts ("double free or corruption") under a preloaded tcmalloc.
            log(f"skipping {variant}: OpenVINO crashes under a preloaded tcmalloc; run --allocator glibc")
            continue
        if variant in ("bf16", "int8-bf16") and not OpenVinoBackend.supports_precision("bf16"):
            log(f"skipping {variant}: this CPU has no native bf16 (AVX512-BF16 or AMX)")
            continue
        target = workdir / f"{package.name}-{variant}"
        if not (target / "model.json").exists():
            log(f"building the {variant} package")
            if variant == "fp32-traced":
                export_model(checkpoint, target, attention_rows=0, validate=False, force=True)
            else:
                optimize_package(package, target, variant, measure_runs=0, strict=False, force=True)
        packages[variant] = target
    return sam, config, checkpoint, packages


def bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    threads = args.threads
    torch.set_num_threads(threads)
    sam, config, checkpoint, packages = prepare(args, log)
    image = bench_image(*BENCH_IMAGE_SIZE)
    cases = prompt_cases(*image.shape[:2])
    allocator = "tcmalloc" if "tcmalloc" in os.environ.get("LD_PRELOAD", "") else "glibc"
    if args.torch_allocator == "same":
        side: Any = TorchSide(sam, threads)
    else:
        log(f"PyTorch runs in a process of its own, allocator {args.torch_allocator}")
        side = RemoteTorchSide(checkpoint, config, threads, args.torch_allocator)
    try:
        return _bench(args, log, side, sam, config, checkpoint, packages, image, cases, allocator)
    finally:
        if isinstance(side, RemoteTorchSide):
            side.close()


def _bench(
    args: argparse.Namespace,
    log: Callable[[str], None],
    side: Any,
    sam: Any,
    config: Any,
    checkpoint: Path,
    packages: dict[str, Path],
    image: np.ndarray,
    cases: dict[str, dict[str, Any]],
    allocator: str,
) -> dict[str, Any]:
    import samdeploy
    from samdeploy.engine import Profile
    from samdeploy.sam.graphs import segment_files_graph
    from samdeploy.sam.prompts import validate_prompt

    threads = args.threads
    report: dict[str, Any] = {
        "command": "python benchmarks/bench_sam.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "allocator": allocator,
        "torch_allocator": allocator if args.torch_allocator == "same" else args.torch_allocator,
        "torch_process": "same" if args.torch_allocator == "same" else "own",
        "threads": threads,
        "model_type": args.model_type if args.package is None else package_type(packages["fp32"]),
        "packages": {name: samdeploy.ModelPackage.load(path).precision for name, path in packages.items()},
        "fast_accuracy": {
            name: samdeploy.ModelPackage.load(path).export_report["precision"]["accuracy"]["worst"]
            for name, path in packages.items()
            if name in FAST_VARIANTS
        },
        "repeat": args.repeat,
    }

    torch_encode, torch_encode_bf16 = side.encode, side.encode_bf16

    # --- PyTorch configurations, against eager fp32
    torch_fns: dict[str, Callable[[], None]] = {"pytorch eager fp32": torch_encode}
    if args.torch_compile:
        log("torch.compile (first call compiles)")
        report["torch_compile_s"] = side.compile()
        torch_fns["pytorch torch.compile fp32"] = side.encode_compiled
    groups = {}
    if len(torch_fns) > 1:
        log("encoder: PyTorch eager against torch.compile")
        groups["pytorch"] = interleaved(torch_fns, args.repeat)
    # bf16 has no hardware path on CPUs without AVX512-BF16/AMX, where it is emulated: one call of
    # the vit_b encoder took 288 s on Zen 3 against 8 s in fp32. Timed there only when asked.
    if args.bf16_rounds is None:
        args.bf16_rounds = 1 if native_bf16(report["machine"]) else 0
        if not args.bf16_rounds:
            log("PyTorch bf16 autocast not timed: this CPU has no native bf16 (--bf16-rounds 1 times it)")
    if args.bf16_rounds:
        log("encoder: PyTorch bf16 autocast")
        groups["pytorch bf16"] = interleaved(
            {"pytorch eager fp32": torch_encode, "pytorch bf16 autocast": torch_encode_bf16}, args.bf16_rounds
        )
        log(_brief(groups["pytorch bf16"]))

    # --- each samdeploy package against PyTorch eager fp32 (one package loaded at a time)
    latency: dict[str, dict[str, Any]] = {}
    nodes: list[dict[str, Any]] = []

    def detail(model: Any, ours: Any) -> None:
        """Prompts, per-node profile, segment and segment-everything on the fp32 package."""
        torch_encode()
        ours.set_image(image)
        for name, case in cases.items():
            latency[f"predict: {name}"] = interleaved(
                {
                    "pytorch": lambda name=name: side.predict(name),
                    "samdeploy": lambda case=case: ours.predict(**case),
                },
                args.repeat * 5,
                warmup=3,
                settle_s=SETTLE_S,
            )
        log("per-node profile")
        profile = Profile()
        ours.profile = profile
        for _ in range(max(2, args.repeat)):
            ours.set_image(image)
            ours.predict(**cases["1 point"])
        ours.profile = None
        nodes[:] = [
            {"node": s.node, "count": s.count, "mean_ms": s.mean_ms, "p95_ms": s.p95_ms}
            for s in profile.stats()
        ]
        log("segment: a PNG file in, masks out")
        with tempfile.TemporaryDirectory(prefix="samdeploy-bench-") as tmp:
            from PIL import Image

            photo = Path(tmp) / "photo.png"
            Image.fromarray(image).save(photo)
            graph = segment_files_graph(model.graph, max_pixels=None)
            prompt = validate_prompt(**cases["1 point"], mask_input_size=model.mask_input_size)
            inputs = {"path": str(photo), "prompt": prompt, "multimask_output": True, "return_logits": False}

            latency["segment (file, 1 point)"] = interleaved(
                {
                    "pytorch": lambda: side.segment(str(photo)),
                    "samdeploy": lambda: graph.run(inputs, executor=model.executor),
                },
                args.repeat,
                warmup=0,
            )
        if args.everything_points:
            log(f"segment everything ({args.everything_points}x{args.everything_points} points)")
            mine = samdeploy.SamAutomaticMaskGenerator(model, points_per_side=args.everything_points)
            counts: dict[str, int] = {}

            def torch_everything() -> None:
                counts["pytorch"] = side.everything(args.everything_points)

            def our_everything() -> None:
                counts["samdeploy"] = len(mine.generate(image))

            row = interleaved({"pytorch": torch_everything, "samdeploy": our_everything}, 1, warmup=0)
            row["points_per_side"] = args.everything_points
            row["masks"] = counts
            latency["segment everything"] = row

    for variant, path in packages.items():
        log(f"encoder and prompts: samdeploy {variant}")
        model = samdeploy.load_model(path, threads=threads, cache_mb=0)
        ours = samdeploy.SamPredictor(model)
        groups[variant] = interleaved(
            {
                "pytorch eager fp32": torch_encode,
                f"samdeploy {variant}": lambda ours=ours: ours.set_image(image),
            },
            args.repeat,
        )
        log(_brief(groups[variant]))
        if variant == "fp32":
            detail(model, ours)
        elif variant in OPENVINO_VARIANTS:
            torch_encode()
            ours.set_image(image)

            latency[f"predict: 1 point ({variant})"] = interleaved(
                {
                    "pytorch": lambda: side.predict("1 point"),
                    "samdeploy": lambda ours=ours: ours.predict(**cases["1 point"]),
                },
                args.repeat * 5,
                warmup=3,
                settle_s=SETTLE_S,
            )
        model.close()
        gc.collect()
    report["encoder_groups"] = groups
    report["latency"] = latency
    report["nodes"] = nodes
    report["encoder"] = encoder_summary(groups)

    log("stream of images, each executor mode")
    stream = stream_throughput(packages["fp32"], threads, args.stream_images)
    stream["pytorch loop"] = side.stream(args.stream_images)
    stream["encoder_bound_images_per_s"] = 1e3 / groups["fp32"]["samdeploy fp32"]["median_ms"]
    report["stream"] = stream
    if "fp32-traced" in packages:
        traced = stream_throughput(packages["fp32-traced"], threads, args.stream_images)
        traced["encoder_bound_images_per_s"] = (
            1e3 / groups["fp32-traced"]["samdeploy fp32-traced"]["median_ms"]
        )
        report["stream_fp32_traced"] = traced

    log("GFLOP/s and the GEMM peak")
    gflop = encoder_gflop(config.to_json())
    peaks = {"onnxruntime": gemm_peak_gflops(threads)["gflops"], "pytorch": torch_gemm_peak(threads)}
    peak = max(peaks.values())
    report["flops"] = {
        "encoder_gflop": gflop,
        "encoder_gflop_torch_count": torch_encoder_gflop(sam),
        "gemm_peak_gflops": peaks,
        # The bf16 and int8 ceilings of the OpenVINO packages, where they ran.
        "openvino_gemm_peak_gflops": (
            openvino_gemm_peaks(threads) if {"bf16", "int8-bf16"} & set(packages) else None
        ),
        # PyTorch's own bf16 rate: what its bf16 autocast side can reach on this CPU.
        "pytorch_bf16_gemm_peak_gflops": (
            torch_gemm_peak(threads, dtype="bfloat16") if args.bf16_rounds else None
        ),
        "peak": peak,
        "achieved_gflops": {name: gflop / row["median_ms"] * 1e3 for name, row in report["encoder"].items()},
    }

    log("load time and peak memory (fresh processes)")
    memory = {"pytorch": run_torch_probe(checkpoint, config, threads)}
    for variant, path in packages.items():
        memory[f"samdeploy {variant}"] = memory_probe(path, threads)
    report["memory"] = memory
    report["machine"]["loadavg_after"] = list(os.getloadavg())
    return report


def _brief(group: dict[str, dict[str, float]]) -> str:
    return "; ".join(
        f"{k} {v['median_ms'] / 1e3:.2f} s ({v['ratio_to_first']:.2f}x)" for k, v in group.items()
    )


def package_type(package: Path) -> str:
    from samdeploy.package import ModelPackage

    return ModelPackage.load(package).model_type


def encoder_summary(groups: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """One row per configuration: its median time and its speed relative to PyTorch eager fp32.

    Every group was run round-robin with PyTorch eager fp32, so ``vs_eager`` (eager time / this
    time, the median of per-round ratios) is comparable across groups even when the machine's load
    changed between them; ``median_ms`` is this configuration's own median.
    """
    rows: dict[str, dict[str, float]] = {}
    for group in groups.values():
        for name, row in group.items():
            if name == "pytorch eager fp32" and name in rows:
                continue
            rows[name] = {
                "median_ms": row["median_ms"],
                "best_ms": row["best_ms"],
                "vs_eager": row["ratio_to_first"],
            }
    return rows


# ----------------------------------------------------------------------------- writing


def _ratio_row(name: str, row: dict[str, dict[str, float]], a: str = "pytorch", b: str = "samdeploy") -> str:
    ref, ours = row[a], row[b]
    return (
        f"| {name} | {ref['median_ms']:.1f} ms | {ours['median_ms']:.1f} ms | {ours['ratio_to_first']:.2f}x |"
    )


def native_bf16(machine: dict[str, Any]) -> bool:
    """Whether the run's CPU multiplies bf16 natively (AVX512-BF16 or AMX); True for a run recorded
    before the CPU was identified, whose reports always judged the fast encoders against bf16."""
    from samdeploy.cpu import has_native_bf16

    info = machine.get("cpu_info")
    return info is None or has_native_bf16(info["flags"])


def auto_pick(machine: dict[str, Any]) -> str | None:
    """The package ``--precision auto`` picks on the run's CPU, from its flags and whether OpenVINO
    was installed (taken to run bf16 where the CPU multiplies it natively); None for a run recorded
    before the CPU was identified."""
    from samdeploy.cpu import choose_precision

    info = machine.get("cpu_info")
    if info is None:
        return None
    openvino = "openvino" in machine.get("versions", {}) and native_bf16(machine)
    return choose_precision(info["flags"], openvino).precision


def issue_targets(report: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """The targets of issues 7 and 20 judged on this run (issue 20's: the fp32 encoders' share of the
    GEMM peak, a one-point predict within 20 ms, the fast encoders at 2x PyTorch's bf16 autocast):
    (target, wanted, measured, met).

    The 2x is asked of CPUs with native bf16. On the others (Zen 3 class) PyTorch's bf16 autocast is
    emulated, far slower than its fp32, and issue 20 asks only for the fast encoder's ratio against
    PyTorch at its best there: that row is reported, not judged.

    Judged figures are cut, not rounded, to the digits shown, so a miss never reads as the target
    (2.997x shows as 2.99x, not 3.00x).
    """
    enc = report["encoder"]
    fp32_configs = {k: v for k, v in enc.items() if k.startswith("pytorch") and "bf16" not in k}
    best = max(fp32_configs.values(), key=lambda row: row["vs_eager"])["vs_eager"]
    rows: list[tuple[str, str, str, bool | None]] = []
    for name in ("samdeploy fp32", "samdeploy fp32-traced", "samdeploy fp32-openvino"):
        if name in enc:
            ratio = enc[name]["vs_eager"] / best
            rows.append((f"{name} encoder vs best PyTorch fp32", ">= 1.5x", cut_ratio(ratio), ratio >= 1.5))
            flops = report.get("flops")
            if flops and name in flops["achieved_gflops"] and name != "samdeploy fp32-traced":
                share = flops["achieved_gflops"][name] / flops["peak"]
                rows.append(
                    (
                        f"{name} encoder, share of the fp32 GEMM peak",
                        ">= 90%",
                        f"{math.floor(share * 100)}%",
                        share >= 0.9,
                    )
                )
    for suffix, faithful in (
        ("", True),
        (" (fp32-openvino)", True),
        (" (bf16)", False),
        (" (int8-bf16)", False),
    ):
        point = report["latency"].get(f"predict: 1 point{suffix}")
        if point:
            ms = point["samdeploy"]["median_ms"]
            package = suffix.strip(" ()") or "fp32"
            rows.append(
                (f"single-point predict, warm ({package} package)", "<= 20 ms", f"{ms:.1f} ms", ms <= 20)
            )
            ratio = point["samdeploy"]["ratio_to_first"]
            met = ratio >= 3 if faithful else None
            rows.append(
                (
                    f"single-point predict vs PyTorch{suffix}",
                    ">= 3x" if faithful else "-",
                    cut_ratio(ratio),
                    met,
                )
            )
    bf16 = enc.get("pytorch bf16 autocast")
    native = native_bf16(report["machine"])
    judged = bf16 is not None and native
    torch_configs = {k: v for k, v in enc.items() if k.startswith("pytorch")}
    torch_best = max(torch_configs, key=lambda k: torch_configs[k]["vs_eager"])
    auto = auto_pick(report["machine"])
    for fast in FAST_VARIANTS:
        if f"samdeploy {fast}" not in enc:
            continue
        if not judged:
            ratio = enc[f"samdeploy {fast}"]["vs_eager"] / torch_configs[torch_best]["vs_eager"]
            why = "" if native else "; no native bf16 on this CPU"
            rows.append(
                (
                    f"fast ({fast}) encoder vs PyTorch at its best ({torch_best.removeprefix('pytorch ')})",
                    f"- (reported{why})",
                    f"{ratio:.2f}x",
                    None,
                )
            )
        else:
            ratio = enc[f"samdeploy {fast}"]["vs_eager"] / bf16["vs_eager"]
            # The target is the fast path's: the package --precision auto picks on this CPU.
            judge = auto is None or fast == auto
            rows.append(
                (
                    f"fast ({fast}) encoder vs PyTorch bf16 autocast",
                    ">= 2x (aim 2.5x; issue 7: 1.7x)" if judge else f"- (--precision auto picks {auto} here)",
                    cut_ratio(ratio),
                    ratio >= 2 if judge else None,
                )
            )
            ratio = enc[f"samdeploy {fast}"]["vs_eager"] / best
            rows.append((f"fast ({fast}) encoder vs best PyTorch fp32", "-", f"{ratio:.2f}x", None))
        worst = report.get("fast_accuracy", {}).get(fast)
        if worst:
            rows.append(
                (
                    f"fast ({fast}) accuracy vs fp32: embedding cosine / mask agreement",
                    ">= 0.999 / >= 98%",
                    f"{worst['embeddings_cosine']:.5f} / {100 * worst['mask_agreement']:.2f}%",
                    worst["embeddings_cosine"] >= 0.999 and worst["mask_agreement"] >= 0.98,
                )
            )
    for key, label in (("stream", "fp32"), ("stream_fp32_traced", "fp32-traced")):
        if key in report:
            share = report[key]["pipeline"] / report[key]["encoder_bound_images_per_s"]
            rows.append(
                (
                    f"pipeline stream vs encoder-bound limit ({label})",
                    ">= 90%",
                    f"{math.floor(share * 100)}%",
                    share >= 0.9,
                )
            )
    for side, row in report["memory"].items():
        if side.startswith("samdeploy"):
            peak = row["peak_rss_mb"]
            rows.append((f"peak RSS serving prompts, {side}", "< 1500 MB", f"{peak:.0f} MB", peak < 1500))
    return rows


def cut_ratio(ratio: float) -> str:
    """``ratio`` as ``2.99x``: cut to two decimals, never rounded up."""
    return f"{math.floor(ratio * 100 + 1e-9) / 100:.2f}x"


def describe_cpu(machine: dict[str, Any]) -> str:
    """The CPU of a run in words: name, kind, family/model and the flags the packages' speed depends on."""
    info = machine.get("cpu_info")
    if info is None:  # a run recorded before the CPU was identified
        return f"{machine['cpu']}, SIMD {', '.join(machine['simd'])}"
    numbers = f" family {info['family']} model {info['model']}" if info["family"] is not None else ""
    flags = info["flags"]
    amx = [flag for flag in flags if flag.startswith("amx")]
    return (
        f"{info['model_name']} ({info['kind']}: {info['vendor'] or 'unknown vendor'}{numbers}), flags"
        f" {', '.join(flags) or 'none known'}" + ("" if amx else "; no AMX")
    )


def write_markdown(report: dict[str, Any], path: Path, chart: str | None) -> None:
    m = report["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    enc = report["encoder"]
    eager = enc["pytorch eager fp32"]
    fp32_configs = {k: v for k, v in enc.items() if k.startswith("pytorch") and "bf16" not in k}
    best_name = max(fp32_configs, key=lambda k: fp32_configs[k]["vs_eager"])
    best = fp32_configs[best_name]
    bf16 = enc.get("pytorch bf16 autocast")
    lines = [
        f"# Benchmarks: random-weight `{report['model_type']}`",
        "",
        f"Measured with `{report['command']}` (allocator: {report['allocator']}"
        + (
            f"; PyTorch in a process of its own, allocator {report['torch_allocator']}"
            if report.get("torch_process") == "own"
            else ""
        )
        + ").",
        "",
        f"Machine: {describe_cpu(m)}; {m['cores']} cores; {report['threads']} threads on both"
        f" sides; load average {m['loadavg'][0]:.1f} at the start, {m['loadavg_after'][0]:.1f} at the end"
        " (the machine is shared: read the ratios, which come from round-robin runs, rather than the"
        " absolute times). Python " + m["python"] + "; " + versions + ".",
        "",
        "## Image encoder",
        "",
        "Each configuration ran round-robin with PyTorch eager fp32; *vs eager* is the median of the"
        " per-round ratios (eager time / this time), *vs best fp32* and *vs bf16* divide it by the"
        f" same figure of PyTorch's best fp32 configuration here ({best_name}) and of bf16 autocast.",
        "",
        "| configuration | median | best | vs eager | vs best PyTorch fp32 | vs PyTorch bf16 | GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    flops = report["flops"]
    for name, row in enc.items():
        vs_bf16 = f"{row['vs_eager'] / bf16['vs_eager']:.2f}x" if bf16 else "-"
        lines.append(
            f"| {name} | {row['median_ms'] / 1e3:.2f} s | {row['best_ms'] / 1e3:.2f} s | {row['vs_eager']:.2f}x |"
            f" {row['vs_eager'] / best['vs_eager']:.2f}x | {vs_bf16} | {flops['achieved_gflops'][name]:.1f} |"
        )
    torch_count = flops["encoder_gflop_torch_count"]
    lines += [
        "",
        f"The encoder does {flops['encoder_gflop']:.1f} GFLOP per image"
        + (f" (PyTorch's FlopCounter: {torch_count:.1f})" if torch_count else "")
        + ". Measured fp32 matrix-multiply peak on these threads: "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in flops["gemm_peak_gflops"].items())
        + (
            "; OpenVINO at bf16 "
            + " GFLOP/s, with int8 weights (multiplied in int8) ".join(
                f"{ov_peaks[k]:.1f}" for k in ("bf16", "int8")
            )
            + " GFLOP/s"
            if (ov_peaks := flops.get("openvino_gemm_peak_gflops"))
            else ""
        )
        + (
            f"; PyTorch at bf16 {torch_bf16:.1f} GFLOP/s"
            if (torch_bf16 := flops.get("pytorch_bf16_gemm_peak_gflops"))
            else ""
        )
        + f"; GFLOP/s above use the medians (eager ran at {eager['median_ms'] / 1e3:.2f} s in its first group).",
        "",
        "## Issue 7 and 20 targets, judged on this run",
        "",
        "| target | wanted | measured | met |",
        "| --- | --- | ---: | --- |",
        *[
            f"| {t} | {w} | {v} | {'yes' if ok else 'no' if ok is not None else '-'} |"
            for t, w, v, ok in issue_targets(report)
        ],
        "",
        "## Prompts and end to end (samdeploy fp32 package)",
        "",
        "| what | PyTorch | samdeploy | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in report["latency"].items():
        if name == "segment everything":
            counts = row["masks"]
            lines.append(
                f"| segment everything ({row['points_per_side']}² points; {counts.get('pytorch')} vs"
                f" {counts.get('samdeploy')} masks) | {row['pytorch']['median_ms']:.0f} ms |"
                f" {row['samdeploy']['median_ms']:.0f} ms | {row['samdeploy']['ratio_to_first']:.2f}x |"
            )
        else:
            lines.append(_ratio_row(name, row))
    stream = report["stream"]
    lines += [
        "",
        "## Stream of images (five-node graph, one point per image)",
        "",
        "| | images/s |",
        "| --- | ---: |",
    ]
    for key in ("sequential", "task", "pipeline", "pytorch loop", "encoder_bound_images_per_s"):
        label = "encoder-bound limit (1 / encoder median)" if key == "encoder_bound_images_per_s" else key
        lines.append(f"| {label} | {stream[key]:.3f} |")
    if "stream_fp32_traced" in report:
        traced = report["stream_fp32_traced"]
        lines.append(
            f"| fp32-traced package: pipeline / its encoder-bound limit | {traced['pipeline']:.3f} /"
            f" {traced['encoder_bound_images_per_s']:.3f} |"
        )
    lines += ["", "## Load time and peak memory (fresh process, serving every prompt kind)", ""]
    lines += ["| side | load | peak RSS |", "| --- | ---: | ---: |"]
    for side, row in report["memory"].items():
        lines.append(f"| {side} | {row['load_s']:.2f} s | {row['peak_rss_mb']:.0f} MB |")
    lines += [
        "",
        "## Time per node (samdeploy fp32, set_image + one-point predict)",
        "",
        "| node | runs | mean | p95 |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['node']} | {r['count']} | {r['mean_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        for r in report["nodes"]
    ]
    if chart:
        lines += ["", f"![time per node]({chart})"]
    lines.append("")
    path.write_text("\n".join(lines))


def draw_breakdown(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """A horizontal bar chart of mean time per node, drawn with Pillow (no plotting dependency)."""
    from PIL import Image, ImageDraw

    width, bar_h, left = 900, 34, 170
    image = Image.new("RGB", (width, 50 + bar_h * len(rows)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 12), title, fill="black")
    longest = max((r["mean_ms"] for r in rows), default=1.0) or 1.0
    for i, row in enumerate(rows):
        y = 40 + i * bar_h
        length = int((width - left - 140) * row["mean_ms"] / longest)
        draw.text((10, y + 8), row["node"], fill="black")
        draw.rectangle([left, y + 4, left + max(length, 1), y + bar_h - 6], fill=(66, 133, 244))
        draw.text((left + length + 8, y + 8), f"{row['mean_ms']:.1f} ms", fill="black")
    image.save(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-type", default="vit_b", choices=["tiny", "vit_b", "vit_l", "vit_h"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per comparison (prompts: 5x)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream-images", type=int, default=4)
    parser.add_argument("--everything-points", type=int, default=16, help="0 skips segment-everything")
    parser.add_argument(
        "--variants", default=",".join(SAMDEPLOY_VARIANTS), help="samdeploy packages to compare"
    )
    parser.add_argument(
        "--torch-compile", action="store_true", help="also time torch.compile (slow to compile)"
    )
    parser.add_argument("--allocator", choices=["auto", "tcmalloc", "glibc"], default="auto")
    parser.add_argument(
        "--torch-allocator",
        choices=["same", "tcmalloc", "glibc"],
        default="same",
        help="same: PyTorch runs in this process; tcmalloc or glibc: in a process of its own with that"
        " allocator (e.g. --allocator glibc --torch-allocator tcmalloc: OpenVINO beside PyTorch at its best)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where to keep checkpoints and packages")
    parser.add_argument(
        "--package", type=Path, default=None, help="an existing fp32 package (with --checkpoint)"
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="the checkpoint --package was exported from"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="write the JSON, markdown and chart here (default: benchmarks/results/<cpu-kind>/[RUN])",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="a sub-folder of benchmarks/results/<cpu-kind>/ for this run, e.g. openvino",
    )
    parser.add_argument(
        "--bf16-rounds",
        type=int,
        default=None,
        help="timed rounds of PyTorch bf16 autocast (0 skips it; default: 1 on CPUs with native bf16, else 0)",
    )
    parser.add_argument(
        "--render", type=Path, default=None, help="only rewrite the report from a results JSON"
    )
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(SAMDEPLOY_VARIANTS)
    if unknown or "fp32" not in args.variants:
        parser.error(f"--variants takes fp32 plus any of {', '.join(SAMDEPLOY_VARIANTS)}")
    return args


def _with_allocator(args: argparse.Namespace) -> None:
    """Re-execute this script with tcmalloc preloaded when asked (or found, for ``auto``)."""
    if args.allocator == "glibc" or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    library = next((p for p in TCMALLOC if Path(p).exists()), None)
    if library is None:
        if args.allocator == "tcmalloc":
            raise SystemExit("tcmalloc not found: apt-get install libtcmalloc-minimal4")
        return
    env = dict(os.environ, LD_PRELOAD=library)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def results_dir(machine: dict[str, Any], run: str | None = None) -> Path:
    """``benchmarks/results/<cpu-kind>/[run]``: one folder per kind of CPU, so that runs on
    different machines never overwrite or mix with each other."""
    folder = ROOT / "benchmarks" / "results" / machine["cpu_info"]["kind"]
    return folder / run if run else folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
    else:
        if argv is None:
            _with_allocator(args)
        report = bench(args)
    name = report["model_type"]
    # A re-rendered report stays beside its JSON; a new run goes to its CPU's folder.
    if args.output_dir is not None or args.render is not None:
        results = args.output_dir or args.render.parent
    else:
        results = results_dir(report["machine"], args.run)
    markdown, chart = results / f"{name}.md", results / f"{name}-nodes.png"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    draw_breakdown(
        report["nodes"], chart, f"samdeploy {name}: mean time per node (set_image + one-point predict)"
    )
    write_markdown(report, markdown, chart.name)
    print(f"wrote {markdown}, {chart}, {results / (name + '.json')}")
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
