"""The SAM graph, built from a model package's manifest.

Five nodes in two nested graphs, so an image is encoded once and prompted many times::

    sam
    ├── encode:  image -> preprocess -> image_encoder -> image_embeddings, original_size
    └── decode:  prompt -> prompt_build -> mask_decoder -> postprocess -> masks, scores, low_res_logits

``encode`` and ``decode`` run on their own (the predictor's ``set_image`` and ``predict``); ``sam``
runs both for one image and one prompt (the command line streams several through it).
``segment_files`` puts a file reader in front, so a bad file fails its own item only.

A package whose decoder comes cut in two (see :attr:`~samdeploy.package.ModelPackage.has_prepared_decoder`)
also gets ``decode_prepared``, for prompts without a ``mask_input``::

    decode_prepared: image_embeddings -> image_side (once per image) ─┐
                     prompt -> prompt_build ──────────────────────────┴-> mask_decoder -> postprocess
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from samdeploy.engine import Graph, Inference
from samdeploy.engine.backends.onnxruntime import provider_name
from samdeploy.errors import PackageError
from samdeploy.package import (
    ENCODER,
    IMAGE_SIDE,
    IMAGE_SIDE_OUTPUTS,
    MASK_FILTER_OUTPUT,
    PREPARED_DECODER,
    PREPARED_DECODER_INPUTS,
    ModelPackage,
)
from samdeploy.sam.nodes import Postprocess, Preprocess, PromptBuild, ReadImage

# The decoder outputs postprocess needs; its own upscaled ``masks`` output is not used.
DECODER_OUTPUTS = ["iou_predictions", "low_res_masks"]
EMBEDDINGS = "image_embeddings"
# Images whose decoder image side (about 10 MiB each for the official models) the prepared decode
# graph keeps: a few, for the few images being prompted at once.
IMAGE_SIDE_MEMO = 4


class RoleRuntime(NamedTuple):
    """How a package asks one of its models to run: ``backend`` at ``precision``, with extra backend
    ``options`` (name, value) pairs (e.g. OpenVINO's ``quantization_group``)."""

    role: str
    backend: str
    precision: str | None
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BackendOptions:
    """How the two Inference nodes run their models (params of :class:`~samdeploy.engine.Inference`)."""

    backend: str = "onnxruntime"
    providers: list[str] | None = None
    threads: int = 0  # intra-op threads; 0: the backend's default
    # Intra-op threads of a decoder-side run (every model but the encoder) that starts while no
    # other model runs in this process; 0, or not above a nonzero ``threads``: off (see Inference).
    solo_threads: int = 0
    # Models that run elsewhere than ``backend``: a bf16 package's encoder and decoders on OpenVINO
    # at bf16 (see samdeploy.sam.model.package_runtime).
    roles: tuple[RoleRuntime, ...] = ()

    def for_role(self, role: str | None) -> RoleRuntime:
        """How model ``role`` runs (precision None and no options where the package asks nothing)."""
        for runtime in self.roles:
            if runtime.role == role:
                return runtime
        return RoleRuntime(role or "", self.backend, None)

    def params(
        self, model: str, outputs: list[str], release_memory: bool = False, role: str | None = None
    ) -> dict[str, Any]:
        """Inference params of model ``role``; ``release_memory`` gives a run's activations back when
        it ends (ONNX Runtime: no CPU arena) for models whose working set dwarfs everything else
        (the encoder)."""
        runtime = self.for_role(role)
        backend = runtime.backend
        params: dict[str, Any] = {"model": model, "backend": backend, "outputs": outputs}
        if release_memory and backend == "onnxruntime":
            params["memory_arena"] = False
        if runtime.precision is not None:
            params["precision"] = runtime.precision
        params.update(runtime.options)
        if self.providers is not None and backend == self.backend:
            params["providers"] = list(self.providers)
        if self.threads:
            params["threads"] = self.threads
            if self.solo_threads > self.threads and role != ENCODER and self.on_cpu:
                params["solo_threads"] = self.solo_threads
        return params

    @property
    def on_cpu(self) -> bool:
        return on_cpu(self.providers)


def on_cpu(providers: Sequence[str] | None) -> bool:
    """Whether models given these ONNX Runtime ``providers`` run on the CPU (none, or only the CPU
    one): only there do intra-op threads, and so ``solo_threads``, matter."""
    cpu = "CPUExecutionProvider"
    return all(provider_name(p, [cpu]) == cpu for p in providers or ())


def encode_graph(package: ModelPackage, options: BackendOptions) -> Graph:
    """``image`` (HxWx3 uint8 RGB) -> ``image_embeddings`` (1xCxhxw), ``original_size`` (H, W)."""
    graph = Graph("encode")
    graph.add(
        Preprocess(
            "preprocess",
            {
                "image_size": package.image_size,
                "pixel_mean": list(package.pixel_mean),
                "pixel_std": list(package.pixel_std),
            },
        )
    )
    graph.add(
        Inference(
            "image_encoder",
            options.params(str(package.encoder_path), [EMBEDDINGS], release_memory=True, role=ENCODER),
        )
    )
    encoder_input = package.model(ENCODER).inputs[0].name
    graph.connect("preprocess.tensor", f"image_encoder.{encoder_input}")
    graph.input("image", "preprocess.image")
    graph.output(EMBEDDINGS, f"image_encoder.{EMBEDDINGS}")
    graph.output("original_size", "preprocess.original_size")
    return graph


def decoder_node(package: ModelPackage, options: BackendOptions) -> Inference:
    """The ``mask_decoder`` node: the package's low-res decoder when it has one (see
    :attr:`~samdeploy.package.ModelPackage.prompt_decoder`), else the official six-input graph."""
    path = package.model_path(package.prompt_decoder)
    outputs = DECODER_OUTPUTS + ([MASK_FILTER_OUTPUT] if package.filters_masks else [])
    params = options.params(str(path), outputs, role=package.prompt_decoder)
    return Inference("mask_decoder", params)


def connect_prompt_ports(graph: Graph, package: ModelPackage) -> None:
    """Wire ``prompt_build``'s outputs to the decoder inputs the package's prompt decoder takes."""
    for port in package.prompt_decoder_inputs:
        if port != EMBEDDINGS:
            graph.connect(f"prompt_build.{port}", f"mask_decoder.{port}")


def add_prepared_decoder(
    graph: Graph,
    package: ModelPackage,
    options: BackendOptions,
    side_inputs: tuple[str, ...],
    side_outputs: tuple[str, ...],
    decoder_inputs: tuple[str, ...],
    decoder_outputs: list[str],
    memo: int,
) -> None:
    """Add the decoder cut in two to ``graph`` (either family): ``image_side``, which remembers its
    outputs for the last ``memo`` inputs, feeding ``mask_decoder``, whose points come from
    ``prompt_build``. Raises :class:`PackageError` naming a file that lacks the inputs it must take."""
    side = options.params(str(package.model_path(IMAGE_SIDE)), list(side_outputs), role=IMAGE_SIDE)
    path = str(package.model_path(PREPARED_DECODER))
    nodes = (
        (Inference("image_side", {**side, "memo": memo}), IMAGE_SIDE, side_inputs),
        (
            Inference("mask_decoder", options.params(path, decoder_outputs, role=PREPARED_DECODER)),
            PREPARED_DECODER,
            decoder_inputs,
        ),
    )
    for node, role, wanted in nodes:
        names = [spec.name for spec in node.input_specs]
        if missing := [name for name in wanted if name not in names]:
            raise PackageError(
                f"model package {package.root}: {package.model(role).file} lacks the inputs {', '.join(missing)}"
            )
        graph.add(node)
    for port in side_outputs:
        graph.connect(f"image_side.{port}", f"mask_decoder.{port}")
    for port in ("point_coords", "point_labels"):
        graph.connect(f"prompt_build.{port}", f"mask_decoder.{port}")


def decode_graph(
    package: ModelPackage, options: BackendOptions, inside_image: bool = False, prepared: bool = False
) -> Graph:
    """``image_embeddings``, ``prompt``, ``original_size``, ``multimask_output``, ``return_logits``
    -> ``masks`` (BxCxHxW), ``scores`` (BxC), ``low_res_logits`` (BxCxRxR).

    ``prepared``: the graph ``decode_prepared`` for prompts without a ``mask_input`` (the package
    must have the prepared decoder): the decoder's image side runs once per image (its node
    remembers the outputs for the last :data:`IMAGE_SIDE_MEMO` embeddings), the prepared decoder
    once per prompt batch.
    """
    graph = Graph("decode_prepared" if prepared else "decode")
    graph.add(
        PromptBuild(
            "prompt_build",
            {
                "image_size": package.image_size,
                "mask_input_size": list(package.mask_input_size),
                "inside_image": inside_image,
                # every prompt's masks: no threshold (the prepared decoder has no mask filter)
                "mask_filter_tokens": 0 if prepared else package.mask_filter_tokens,
            },
        )
    )
    if prepared:
        add_prepared_decoder(
            graph,
            package,
            options,
            (EMBEDDINGS,),
            IMAGE_SIDE_OUTPUTS,
            PREPARED_DECODER_INPUTS,
            DECODER_OUTPUTS,
            IMAGE_SIDE_MEMO,
        )
        graph.input(EMBEDDINGS, f"image_side.{EMBEDDINGS}")
    else:
        graph.add(decoder_node(package, options))
        connect_prompt_ports(graph, package)
        graph.input(EMBEDDINGS, f"mask_decoder.{EMBEDDINGS}")
    graph.add(Postprocess("postprocess", {"image_size": package.image_size}))
    graph.connect("mask_decoder.low_res_masks", "postprocess.low_res_masks")
    graph.connect("mask_decoder.iou_predictions", "postprocess.iou_predictions")
    graph.input("prompt", "prompt_build.prompt")
    graph.input("original_size", "prompt_build.original_size", "postprocess.original_size")
    graph.input("multimask_output", "postprocess.multimask_output")
    graph.input("return_logits", "postprocess.return_logits")
    for port in ("masks", "scores", "low_res_logits"):
        graph.output(port, f"postprocess.{port}")
    return graph


def sam_graph(
    package: ModelPackage, options: BackendOptions, inside_image: bool = False
) -> tuple[Graph, Graph, Graph]:
    """The full five-node graph ``sam`` and its two parts ``(sam, encode, decode)``.

    ``sam`` takes ``image``, ``prompt``, ``multimask_output``, ``return_logits`` and gives
    ``masks``, ``scores``, ``low_res_logits``.
    """
    encode = encode_graph(package, options)
    decode = decode_graph(package, options, inside_image)
    graph = Graph("sam")
    graph.add(encode)
    graph.add(decode)
    graph.connect(f"encode.{EMBEDDINGS}", f"decode.{EMBEDDINGS}")
    graph.connect("encode.original_size", "decode.original_size")
    graph.input("image", "encode.image")
    for port in ("prompt", "multimask_output", "return_logits"):
        graph.input(port, f"decode.{port}")
    for port in ("masks", "scores", "low_res_logits"):
        graph.output(port, f"decode.{port}")
    graph.validate()
    return graph, encode, decode


def segment_files_graph(sam: Graph, max_pixels: int | None) -> Graph:
    """``path`` (an image file) + the ``sam`` inputs -> ``image`` and the ``sam`` outputs."""
    graph = Graph("segment_files")
    graph.add(ReadImage("read_image", {"max_pixels": max_pixels}))
    graph.add(sam)
    graph.connect("read_image.image", "sam.image")
    graph.input("path", "read_image.path")
    for port in ("prompt", "multimask_output", "return_logits"):
        graph.input(port, f"sam.{port}")
    graph.output("image", "read_image.image")
    for port in ("masks", "scores", "low_res_logits"):
        graph.output(port, f"sam.{port}")
    graph.validate()
    return graph
