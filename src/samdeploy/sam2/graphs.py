"""The SAM 2 graph, built from a SAM 2.x package's manifest.

Five nodes in two nested graphs, as for SAM 1 (same graph ports, so the file streaming and the
command line run either family)::

    sam
    ├── encode:  image -> preprocess -> image_encoder -> high_res_feats_0, high_res_feats_1, image_embed, original_size
    └── decode:  prompt -> prompt_build -> mask_decoder -> postprocess -> masks, scores, low_res_logits

Packages with the decoder cut in two also get ``decode_prepared`` for prompts without a
``mask_input``: the features go through ``image_side`` (once per image, remembered) into the
prepared ``mask_decoder``.
"""

from __future__ import annotations

from samdeploy.engine import Graph, Inference
from samdeploy.package import (
    DECODER,
    ENCODER,
    SAM2_ENCODER_OUTPUTS,
    SAM2_IMAGE_SIDE_INPUTS,
    SAM2_IMAGE_SIDE_OUTPUTS,
    SAM2_PREPARED_DECODER_INPUTS,
    ModelPackage,
)
from samdeploy.sam.graphs import IMAGE_SIDE_MEMO, BackendOptions, add_prepared_decoder
from samdeploy.sam2.nodes import Postprocess, Preprocess, PromptBuild

FEATURES = SAM2_ENCODER_OUTPUTS  # high_res_feats_0, high_res_feats_1, image_embed
PROMPT_INPUTS = ("point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ["low_res_masks", "iou_predictions"]


def encode_graph(package: ModelPackage, options: BackendOptions) -> Graph:
    """``image`` (HxWx3 uint8 RGB) -> the three feature maps and ``original_size`` (H, W)."""
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
            options.params(str(package.encoder_path), list(FEATURES), release_memory=True, role=ENCODER),
        )
    )
    graph.connect("preprocess.tensor", f"image_encoder.{package.model(ENCODER).inputs[0].name}")
    graph.input("image", "preprocess.image")
    for name in FEATURES:
        graph.output(name, f"image_encoder.{name}")
    graph.output("original_size", "preprocess.original_size")
    return graph


def decoder_node(package: ModelPackage, options: BackendOptions, name: str = "mask_decoder") -> Inference:
    """The ``mask_decoder`` node (all four mask tokens; see :mod:`samdeploy.export.sam2`)."""
    return Inference(name, options.params(str(package.decoder_path), list(DECODER_OUTPUTS), role=DECODER))


def prompt_build(package: ModelPackage, inside_image: bool = False) -> PromptBuild:
    return PromptBuild(
        "prompt_build",
        {
            "image_size": package.image_size,
            "mask_input_size": list(package.mask_input_size),
            "inside_image": inside_image,
        },
    )


def postprocess(package: ModelPackage) -> Postprocess:
    settings = package.manifest.get("postprocessing", {})
    dynamic = settings.get("dynamic_multimask", {})
    return Postprocess(
        "postprocess",
        {
            "dynamic_multimask": bool(dynamic.get("enabled", True)),
            "stability_delta": float(dynamic.get("stability_delta", 0.05)),
            "stability_thresh": float(dynamic.get("stability_thresh", 0.98)),
            "mask_threshold": float(settings.get("mask_threshold", 0.0)),
        },
    )


def connect_prompt_ports(graph: Graph, source: str = "prompt_build", decoder: str = "mask_decoder") -> None:
    """Wire a prompt node's outputs into a decoder."""
    for port in PROMPT_INPUTS:
        graph.connect(f"{source}.{port}", f"{decoder}.{port}")


def add_prompt_decoder(
    graph: Graph, package: ModelPackage, options: BackendOptions, prepared: bool, memo: int = IMAGE_SIDE_MEMO
) -> str:
    """Add the ``mask_decoder`` node fed by ``prompt_build`` to ``graph``: the whole decoder, or with
    ``prepared`` the decoder cut in two behind an ``image_side`` node that remembers its outputs for
    the last ``memo`` feature sets. Returns the node that takes the three feature maps."""
    if not prepared:
        graph.add(decoder_node(package, options))
        connect_prompt_ports(graph)
        return "mask_decoder"
    add_prepared_decoder(
        graph,
        package,
        options,
        SAM2_IMAGE_SIDE_INPUTS,
        SAM2_IMAGE_SIDE_OUTPUTS,
        SAM2_PREPARED_DECODER_INPUTS,
        DECODER_OUTPUTS,
        memo,
    )
    return "image_side"


def decode_graph(
    package: ModelPackage, options: BackendOptions, inside_image: bool = False, prepared: bool = False
) -> Graph:
    """The three feature maps, ``prompt``, ``original_size``, ``multimask_output``, ``return_logits``
    -> ``masks`` (BxCxHxW), ``scores`` (BxC), ``low_res_logits`` (BxCxRxR).

    ``prepared``: the graph ``decode_prepared`` for prompts without a ``mask_input`` (the package
    must have the decoder cut in two, see :mod:`samdeploy.export.sam2`): the decoder's image side
    runs once per image (its node remembers the outputs for the last
    :data:`~samdeploy.sam.graphs.IMAGE_SIDE_MEMO` images' features), the prepared decoder once per
    prompt batch.
    """
    graph = Graph("decode_prepared" if prepared else "decode")
    graph.add(prompt_build(package, inside_image))
    features = add_prompt_decoder(graph, package, options, prepared)
    graph.add(postprocess(package))
    graph.connect("mask_decoder.low_res_masks", "postprocess.low_res_masks")
    graph.connect("mask_decoder.iou_predictions", "postprocess.iou_predictions")
    for name in FEATURES:
        graph.input(name, f"{features}.{name}")
    graph.input("prompt", "prompt_build.prompt")
    graph.input("original_size", "prompt_build.original_size", "postprocess.original_size")
    graph.input("multimask_output", "postprocess.multimask_output")
    graph.input("return_logits", "postprocess.return_logits")
    for port in ("masks", "scores", "low_res_logits"):
        graph.output(port, f"postprocess.{port}")
    return graph


def sam2_graph(
    package: ModelPackage, options: BackendOptions, inside_image: bool = False
) -> tuple[Graph, Graph, Graph]:
    """The full graph ``sam`` and its two parts ``(sam, encode, decode)``, with the ports of
    SAM 1's ``sam`` graph (``image``, ``prompt``, ``multimask_output``, ``return_logits`` in;
    ``masks``, ``scores``, ``low_res_logits`` out)."""
    encode = encode_graph(package, options)
    decode = decode_graph(package, options, inside_image)
    graph = Graph("sam")  # the name segment_files_graph wires to
    graph.add(encode)
    graph.add(decode)
    for name in (*FEATURES, "original_size"):
        graph.connect(f"encode.{name}", f"decode.{name}")
    graph.input("image", "encode.image")
    for port in ("prompt", "multimask_output", "return_logits"):
        graph.input(port, f"decode.{port}")
    for port in ("masks", "scores", "low_res_logits"):
        graph.output(port, f"decode.{port}")
    graph.validate()
    return graph, encode, decode
