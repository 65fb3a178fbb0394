"""Measure the simplifiers side by side: graph size, node count, ONNX Runtime latency, correctness.

    python -m samdeploy.export.measure --model-type vit_b --runs 3

Builds a seeded random-weight model of the given type, traces both graphs once, simplifies them
with each method, and times the encoder (after one warm-up run) and a one-point decoder call with
ONNX Runtime, one method at a time to bound memory. The figures chose
:data:`samdeploy.export.checks.DEFAULT_SIMPLIFIER`; docs/export.md records them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from samdeploy.export.checks import SIMPLIFIERS
from samdeploy.export.config import PRESETS, build_sam
from samdeploy.export.models import export_decoder, export_encoder
from samdeploy.export.optimize import save, simplify
from samdeploy.export.validate import Prompt, _encoder_input, decoder_feeds, synthetic_image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=sorted(PRESETS))
    parser.add_argument("--runs", type=int, default=3, help="timed encoder runs per method")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    console = Console()

    torch.manual_seed(0)
    config = PRESETS[args.model_type]
    sam = build_sam(config)
    x = _encoder_input(sam, synthetic_image(480, 640))
    with torch.no_grad():
        reference = sam.image_encoder(x).numpy()
    prompt = Prompt("point", (480, 640), np.array([[200.0, 150.0]]), np.array([1]))
    feeds = decoder_feeds(sam, prompt, reference, None)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_encoder(sam, root / "encoder.onnx", 17)
        export_decoder(sam, config, root / "decoder.onnx", 17)
        del sam
        rows: dict[str, dict[str, float]] = {}
        encoder_times: dict[str, list[float]] = {}
        decoder_times: dict[str, list[float]] = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        # Without the arena each session returns its activations (GBs for vit_b's global attention)
        # after a run, so one method's session does not crowd out the next.
        options.enable_cpu_mem_arena = False
        for method in SIMPLIFIERS:
            row: dict[str, float] = {}
            paths = []
            for part in ("encoder", "decoder"):
                model = onnx.load(str(root / f"{part}.onnx"))
                start = time.perf_counter()
                model = simplify(model, method)
                row[f"{part}_simplify_s"] = time.perf_counter() - start
                row[f"{part}_nodes"] = len(model.graph.node)
                path = root / method / f"{part}.onnx"
                path.parent.mkdir(exist_ok=True)
                save(model, path)
                del model
                row[f"{part}_mb"] = sum(p.stat().st_size for p in path.parent.glob(f"{part}.onnx*")) / 2**20
                paths.append(path)
            encoder = ort.InferenceSession(str(paths[0]), options, providers=["CPUExecutionProvider"])
            embedding = encoder.run(None, {"image": x.numpy()})[0]  # also the warm-up run
            row["embedding_max_abs"] = float(np.abs(embedding - reference).max())
            encoder_times[method] = []
            for _ in range(args.runs):
                start = time.perf_counter()
                encoder.run(None, {"image": x.numpy()})
                encoder_times[method].append(time.perf_counter() - start)
            del encoder
            decoder = ort.InferenceSession(str(paths[1]), options, providers=["CPUExecutionProvider"])
            decoder.run(None, feeds)
            decoder_times[method] = []
            for _ in range(10 * args.runs):
                start = time.perf_counter()
                decoder.run(None, feeds)
                decoder_times[method].append(time.perf_counter() - start)
            del decoder
            rows[method] = row
            console.print(f"{method}: {row} encoder {encoder_times[method]}", highlight=False)

    table = Table(
        title=f"simplifiers on random-weight {args.model_type} ({args.threads} threads, {args.runs} runs)"
    )
    for column in (
        "method",
        "enc nodes",
        "enc MB",
        "enc simplify s",
        "enc median s",
        "dec nodes",
        "dec MB",
        "dec simplify s",
        "dec median ms",
        "emb max abs",
    ):
        table.add_column(column, justify="right")
    for method, row in rows.items():
        table.add_row(
            method,
            f"{row['encoder_nodes']:.0f}",
            f"{row['encoder_mb']:.1f}",
            f"{row['encoder_simplify_s']:.1f}",
            f"{statistics.median(encoder_times[method]):.2f}",
            f"{row['decoder_nodes']:.0f}",
            f"{row['decoder_mb']:.1f}",
            f"{row['decoder_simplify_s']:.1f}",
            f"{1000 * statistics.median(decoder_times[method]):.1f}",
            f"{row['embedding_max_abs']:.2e}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
