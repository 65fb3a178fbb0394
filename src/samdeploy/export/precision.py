"""Faster packages: turn an exported fp32 package into one tuned for CPU inference.

    from samdeploy.export.precision import optimize_package
    report = optimize_package("models/sam_vit_b", "models/sam_vit_b_int8", precision="int8")

Two transformations, measured on a 2-core AVX2 machine (docs/performance.md has the numbers):

* **Chunked global attention** (both precisions). SAM's global-attention blocks build a
  heads x 4096 x 4096 score tensor (805 MB for vit_b), add the two decomposed relative-position
  terms, soft-max it and multiply by V: four passes over memory per block, and ONNX Runtime holds
  two or three such tensors at once (3.7 GB peak for vit_b). The graph is rewritten so the same
  arithmetic runs on bands of query rows (``attention_rows`` rows of the 64x64 grid at a time): the
  scores of a band fit in cache, peak memory drops to a few hundred MB, and the result is the same to
  float32 rounding (each query row's dot products, soft-max and weighted sum are computed exactly
  as before, only fewer rows at a time).
* **int8** (``precision="int8"``): the encoder's 48 linear layers (qkv, proj, MLP: 70% of its
  FLOPs) run as int8 MatMulInteger with per-call activation quantization (ONNX Runtime dynamic
  quantization), weights int8 per output channel with ``reduce_range`` (7-bit). Without VNNI, x86 multiplies u8 x s8
  pairs with ``vpmaddubsw``, whose int16 sums saturate with full 8-bit weights: on the vit_b test
  that costs embedding cosine 0.982; 7-bit weights keep it at 0.9998. Attention products and the
  convolutions stay float32. The decoder stays float32: it is a few ms.

The new package is validated against its source through the runtime itself (embedding cosine on
several images, mask agreement of every parity prompt) and timed against it side by side; the
figures go into ``model.json`` under ``export.precision``. A package below the accuracy bar
(cosine >= 0.999, masks agreeing on >= 98% of pixels) is refused unless ``strict=False``.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from samdeploy.errors import ExportError
from samdeploy.export.exporter import check_output, move_into_place
from samdeploy.export.optimize import quantize_int8
from samdeploy.export.validate import cosine
from samdeploy.package import (
    DECODER,
    ENCODER,
    LOW_RES_DECODER,
    ModelPackage,
    describe_files,
    write_manifest,
)

PRECISIONS = ("fp32", "int8")
# The accuracy bar of issue 7 for a fast package, against the fp32 package it was made from.
ACCURACY_BAR = {"embeddings_cosine": 0.999, "mask_agreement": 0.98}
# Rows of the token grid per attention band; chosen by measurement (docs/performance.md).
DEFAULT_ATTENTION_ROWS = 4
# Global attention over fewer tokens than this is left alone (windows are 14x14 = 196 tokens).
MIN_CHUNK_TOKENS = 1024


@dataclass
class PrecisionReport:
    """What :func:`optimize_package` wrote and measured."""

    output: Path
    precision: str
    transforms: list[str]
    accuracy: dict[str, Any]
    speed: dict[str, Any] | None
    passed: bool
    files: dict[str, int]
    manifest: dict[str, Any] = field(repr=False)


# ----------------------------------------------------------------------------- graph rewrites


def chunk_global_attention(
    model: onnx.ModelProto, rows: int = DEFAULT_ATTENTION_ROWS, min_tokens: int = MIN_CHUNK_TOKENS
) -> int:
    """Rewrite each global-attention block of a traced SAM image encoder to work on bands of query rows.

    Matches, for every Softmax, the chain SAM's ``Attention.forward`` traces to::

        scores = MatMul(q * scale, k^T)               # [B*heads, N, N], N = qh * qw
        scores = Reshape(scores, [B*heads, qh, qw, kh, kw])
        scores = Add(Add(scores, rel_h), rel_w)       # rel_h [.., qh, qw, kh, 1], rel_w [.., qh, qw, 1, kw]
        probs  = Softmax(Reshape(scores, [B*heads, N, N]))
        out    = MatMul(probs, v)

    and replaces it by the same chain on ``rows``-row bands of the query grid (a Split of q,
    rel_h and rel_w along the query rows, one chain per band, a Concat of the outputs). Blocks
    with fewer than ``min_tokens`` tokens, or grids whose height ``rows`` does not divide, are
    left alone. Edits ``model`` in place; returns the number of blocks rewritten.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {t.name: t for t in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producers.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute:
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def parent(name: str, op_type: str) -> onnx.NodeProto | None:
        node = producers.get(name)
        return node if node is not None and node.op_type == op_type else None

    def add_parent(add: onnx.NodeProto, op_type: str) -> tuple[onnx.NodeProto | None, str | None]:
        """The input of ``add`` made by ``op_type``, and the other input."""
        for mine, other in ((0, 1), (1, 0)):
            node = parent(add.input[mine], op_type)
            if node is not None:
                return node, add.input[other]
        return None, None

    rewrites: dict[int, list[onnx.NodeProto]] = {}
    removed: set[int] = set()
    for index, softmax in enumerate(n for n in list(graph.node) if n.op_type == "Softmax"):
        reshape_3d = parent(softmax.input[0], "Reshape")
        add_w = parent(reshape_3d.input[0], "Add") if reshape_3d is not None else None
        add_h, rel_w = add_parent(add_w, "Add") if add_w is not None else (None, None)
        reshape_5d, rel_h = add_parent(add_h, "Reshape") if add_h is not None else (None, None)
        scores = parent(reshape_5d.input[0], "MatMul") if reshape_5d is not None else None
        users = consumers.get(softmax.output[0], [])
        if (
            scores is None
            or len(users) != 1
            or users[0].op_type != "MatMul"
            or users[0].input[0] != softmax.output[0]
        ):
            continue
        weighted = users[0]
        chain = [scores, reshape_5d, add_h, add_w, reshape_3d, softmax, weighted]
        if any(len(consumers.get(a.output[0], [])) != 1 for a in chain[:-1]):
            continue  # an intermediate is used elsewhere: not the pattern
        shape5, shape3 = constant(reshape_5d.input[1]), constant(reshape_3d.input[1])
        if shape5 is None or shape3 is None or shape5.shape != (5,) or shape3.shape != (3,):
            continue
        batch_heads, qh, qw, kh, kw = (int(v) for v in shape5)
        if min(qh, qw, kh, kw) <= 0 or qh * qw < min_tokens or rows <= 0 or qh % rows or rows == qh:
            continue
        bands = qh // rows
        prefix = f"{softmax.name or f'softmax_{index}'}/bands"

        def const_input(name: str, values: list[int], prefix: str = prefix) -> str:
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(values, dtype=np.int64), f"{prefix}/{name}")
            )
            return f"{prefix}/{name}"

        split_q = const_input("split_q", [rows * qw] * bands)
        split_rel = const_input("split_rel", [rows] * bands)
        band_5d = const_input("shape_5d", [batch_heads, rows, qw, kh, kw])
        band_3d = const_input("shape_3d", [batch_heads, rows * qw, kh * kw])
        q_bands = [f"{prefix}/q_{b}" for b in range(bands)]
        h_bands = [f"{prefix}/rel_h_{b}" for b in range(bands)]
        w_bands = [f"{prefix}/rel_w_{b}" for b in range(bands)]
        new = [
            helper.make_node("Split", [scores.input[0], split_q], q_bands, f"{prefix}/split_q", axis=1),
            helper.make_node("Split", [rel_h, split_rel], h_bands, f"{prefix}/split_rel_h", axis=1),
            helper.make_node("Split", [rel_w, split_rel], w_bands, f"{prefix}/split_rel_w", axis=1),
        ]
        outputs = []
        for b in range(bands):
            p = f"{prefix}/{b}"
            new += [
                helper.make_node("MatMul", [q_bands[b], scores.input[1]], [f"{p}/scores"], f"{p}/qk"),
                helper.make_node("Reshape", [f"{p}/scores", band_5d], [f"{p}/scores_5d"], f"{p}/reshape_5d"),
                helper.make_node("Add", [f"{p}/scores_5d", h_bands[b]], [f"{p}/plus_h"], f"{p}/add_rel_h"),
                helper.make_node("Add", [f"{p}/plus_h", w_bands[b]], [f"{p}/plus_w"], f"{p}/add_rel_w"),
                helper.make_node("Reshape", [f"{p}/plus_w", band_3d], [f"{p}/logits"], f"{p}/reshape_3d"),
                helper.make_node("Softmax", [f"{p}/logits"], [f"{p}/probs"], f"{p}/softmax", axis=-1),
                helper.make_node("MatMul", [f"{p}/probs", weighted.input[1]], [f"{p}/out"], f"{p}/av"),
            ]
            outputs.append(f"{p}/out")
        new.append(helper.make_node("Concat", outputs, [weighted.output[0]], f"{prefix}/concat", axis=1))
        removed.update(id(node) for node in chain)
        rewrites[id(weighted)] = new  # emitted where the last node of the chain was: all inputs exist
    if not rewrites:
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in rewrites:
            nodes += rewrites[id(node)]
        elif id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    produced = {out for node in graph.node for out in node.output}
    value_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return len(rewrites)


# ----------------------------------------------------------------------------- checking and timing


def _parity_prompts(height: int, width: int) -> dict[str, dict[str, Any]]:
    """Prompt kinds of the export validation, as ``SamPredictor.predict`` arguments."""
    box = np.array([0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height])
    return {
        "point": {"point_coords": np.array([[0.35 * width, 0.3 * height]]), "point_labels": np.array([1])},
        "points_with_negatives": {
            "point_coords": np.array(
                [[0.35 * width, 0.3 * height], [0.7 * width, 0.55 * height], [0.5 * width, 0.9 * height]]
            ),
            "point_labels": np.array([1, 0, 1]),
        },
        "box": {"box": box, "multimask_output": False},
        "box_and_point": {
            "box": box,
            "point_coords": np.array([[0.3 * width, 0.25 * height]]),
            "point_labels": np.array([0]),
            "multimask_output": False,
        },
        "box_batch": {
            "box": np.array(
                [
                    [0.15 * width, 0.1 * height, 0.55 * width, 0.5 * height],
                    [0.55 * width, 0.4 * height, 0.9 * width, 0.75 * height],
                    [0.05 * width, 0.6 * height, 0.35 * width, 0.95 * height],
                ]
            ),
            "multimask_output": False,
        },
    }


def compare_packages(
    reference: str | Path, candidate: str | Path, images: int = 2, threads: int | None = None
) -> dict[str, Any]:
    """Accuracy of ``candidate`` against ``reference`` through the runtime (``SamPredictor``).

    For ``images`` synthetic pictures of different shapes: embedding cosine and max abs
    difference; for every parity prompt (plus a ``mask_input`` chain from the point result), the
    fraction of mask pixels that agree, and the largest score difference. ``worst`` holds the
    figures the accuracy bar applies to.
    """
    from samdeploy.export.validate import synthetic_image
    from samdeploy.sam.model import load_model
    from samdeploy.sam.predictor import SamPredictor

    shapes = [(480, 640), (640, 480), (600, 600), (300, 900)][: max(1, images)]
    ref = SamPredictor(load_model(reference, threads=threads, cache_mb=0))
    new = SamPredictor(load_model(candidate, threads=threads, cache_mb=0))
    report: dict[str, Any] = {"images": [], "prompts": {}}
    agreements, score_diffs, cosines = [], [], []
    try:
        for seed, (height, width) in enumerate(shapes):
            image = synthetic_image(height, width, seed=seed)
            ref.set_image(image)
            new.set_image(image)
            a, b = ref.get_image_embedding(), new.get_image_embedding()
            similarity = cosine(a, b)
            cosines.append(similarity)
            report["images"].append(
                {
                    "height": height,
                    "width": width,
                    "embeddings_cosine": similarity,
                    "embeddings_max_abs": float(np.abs(a - b).max()),
                }
            )
            cases = dict(_parity_prompts(height, width))
            for name, case in list(cases.items()):
                want, want_scores, want_low = ref.predict(**case)
                got, got_scores, _ = new.predict(**case)
                agreement = float(np.mean(want == got))
                agreements.append(agreement)
                score_diffs.append(float(np.abs(want_scores - got_scores).max()))
                report["prompts"][f"{name}@{height}x{width}"] = {
                    "mask_agreement": agreement,
                    "scores_max_abs": score_diffs[-1],
                }
                if name == "point":  # chain the best mask, as an interactive tool does
                    best = int(np.argmax(want_scores))
                    chained = {**case, "mask_input": want_low[best : best + 1], "multimask_output": False}
                    want, want_scores, _ = ref.predict(**chained)
                    got, got_scores, _ = new.predict(**chained)
                    agreements.append(float(np.mean(want == got)))
                    score_diffs.append(float(np.abs(want_scores - got_scores).max()))
                    report["prompts"][f"mask_input@{height}x{width}"] = {
                        "mask_agreement": agreements[-1],
                        "scores_max_abs": score_diffs[-1],
                    }
    finally:
        ref.model.close()
        new.model.close()
    report["worst"] = {
        "embeddings_cosine": min(cosines),
        "mask_agreement": min(agreements),
        "mean_mask_agreement": float(np.mean(agreements)),
        "scores_max_abs": max(score_diffs),
    }
    return report


def time_encoders(
    models: dict[str, Path], image_size: int, threads: int | None = None, runs: int = 3
) -> dict[str, Any]:
    """Median encoder time of each ONNX file in ONNX Runtime, run round-robin (so background load
    hits all alike); ``speedup`` of each against the first, as the median of per-round ratios."""
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, image_size, image_size), dtype=np.float32)
    sessions = {}
    for name, path in models.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sessions[name].run(None, {"image": x})  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(max(1, runs)):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"image": x})
            samples[name].append(time.perf_counter() - start)
    first = samples[next(iter(samples))]
    return {
        "threads": threads or os.cpu_count(),
        "runs": max(1, runs),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "encoder_s": {name: statistics.median(values) for name, values in samples.items()},
        "speedup": {
            name: statistics.median(a / b for a, b in zip(first, values, strict=True))
            for name, values in samples.items()
        },
    }


# ----------------------------------------------------------------------------- the package


def optimize_package(
    source: str | Path,
    output: str | Path,
    precision: str = "int8",
    *,
    attention_rows: int | None = DEFAULT_ATTENTION_ROWS,
    threads: int | None = None,
    measure_runs: int = 2,
    check_images: int = 2,
    strict: bool = True,
    force: bool = False,
    log: Any = None,
) -> PrecisionReport:
    """Write a CPU-tuned copy of the fp32 package ``source`` to ``output``.

    Args:
        source: a package made by ``samdeploy export`` at fp32 (the faithful one).
        output: the new package folder; an existing package is replaced only with ``force``.
        precision: ``fp32`` (chunked global attention only: same numbers, far less memory) or
            ``int8`` (chunked attention and dynamic int8 linear layers in the encoder).
        attention_rows: query-grid rows per attention band; ``None`` or 0 keeps the attention as traced.
        threads: threads for the speed measurement (None: ONNX Runtime's default, all cores).
        measure_runs: encoder runs per model when timing new against source (0: skip timing).
        check_images: images for the accuracy check (each with every parity prompt).
        strict: refuse (ExportError, nothing written) a package below :data:`ACCURACY_BAR`.
        log: a callable taking one line of progress, or None.

    Returns a :class:`PrecisionReport`; the same figures are in the new ``model.json`` under
    ``export.precision``, and its ``precision`` field is ``precision``.
    """
    say = log or (lambda _line: None)
    source, output = Path(source), Path(output)
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    package = ModelPackage.load(source, verify=True)
    if package.precision != "fp32":
        raise ExportError(f"{source} is a {package.precision} package; start from the fp32 export")
    if output.resolve() == source.resolve():
        raise ExportError("output must be a new folder, not the source package")
    check_output(output, force)
    encoder_entry = package.manifest["models"][ENCODER]
    if any(
        name != encoder_entry["file"] and name.startswith(encoder_entry["file"])
        for name in package.manifest["files"]
    ):
        raise ExportError("encoders with external weight files (vit_h) are not supported here yet")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    timings: dict[str, float] = {}
    try:
        transforms: list[str] = []
        start = time.perf_counter()
        encoder = onnx.load(str(package.encoder_path))
        if attention_rows:
            say(f"chunking global attention ({attention_rows} rows per band)")
            blocks = chunk_global_attention(encoder, rows=attention_rows)
            if blocks:
                transforms.append(
                    f"chunked global attention: {blocks} blocks, {attention_rows} rows per band"
                )
        fp32_path = staging / f"{ENCODER}.fp32.onnx"
        onnx.save_model(encoder, str(fp32_path))
        del encoder
        timings["rewrite"] = round(time.perf_counter() - start, 2)
        encoder_path = staging / encoder_entry["file"]
        if precision == "int8":
            say("quantizing the encoder's linear layers (dynamic int8, 7-bit weights)")
            start = time.perf_counter()
            quantize_int8(fp32_path, encoder_path, external_data=False)
            fp32_path.unlink()
            transforms.append(
                "dynamic int8 MatMul/Gemm (weights s8 per channel, 7-bit; activations u8 per call)"
            )
            timings["quantize"] = round(time.perf_counter() - start, 2)
        else:
            fp32_path.rename(encoder_path)
        onnx.checker.check_model(str(encoder_path))
        files = [encoder_entry["file"]]
        for role in (DECODER, LOW_RES_DECODER):
            if role in package.manifest["models"]:
                decoder_file = package.manifest["models"][role]["file"]
                shutil.copy2(package.model_path(role), staging / decoder_file)
                files.append(decoder_file)

        manifest = {key: value for key, value in package.manifest.items()}
        manifest["precision"] = precision
        manifest["files"] = describe_files(staging, files)
        export = dict(manifest.get("export", {}))
        export["quantize"] = "int8-dynamic" if precision == "int8" else "none"
        export["precision"] = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {
                "path": str(source.resolve()),
                "encoder_sha256": package.manifest["files"][encoder_entry["file"]]["sha256"],
            },
            "precision": precision,
            "transforms": transforms,
            "decoder": "fp32 (copied)",
        }
        manifest["export"] = export
        write_manifest(staging, manifest)

        say("checking accuracy against the source package")
        start = time.perf_counter()
        accuracy = compare_packages(source, staging, images=check_images, threads=threads)
        timings["check"] = round(time.perf_counter() - start, 2)
        worst = accuracy["worst"]
        problems = [
            f"{key} {worst[key]:.6g} (bar {bar:g})" for key, bar in ACCURACY_BAR.items() if worst[key] < bar
        ]
        passed = not problems
        if problems and strict:
            raise ExportError(
                f"the {precision} package misses the accuracy bar: {'; '.join(problems)}; nothing was written"
            )
        speed = None
        if measure_runs:
            say(f"timing the encoder against the source ({measure_runs} runs each)")
            start = time.perf_counter()
            speed = time_encoders(
                {"source": package.encoder_path, precision: encoder_path},
                package.image_size,
                threads,
                measure_runs,
            )
            timings["measure"] = round(time.perf_counter() - start, 2)
        export["precision"].update(
            {
                "accuracy": accuracy,
                "accuracy_bar": dict(ACCURACY_BAR),
                "passed": passed,
                "speed": speed,
                "timings": timings,
            }
        )
        write_manifest(staging, manifest)
        move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrecisionReport(
        output=output,
        precision=precision,
        transforms=transforms,
        accuracy=accuracy,
        speed=speed,
        passed=passed,
        files={name: manifest["files"][name]["bytes"] for name in files},
        manifest=manifest,
    )
