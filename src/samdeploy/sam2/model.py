"""A loaded SAM 2.x model package: its graph, executor and embedding cache. Never imports torch.

    model = samdeploy.load_model("models/sam2.1_tiny")    # a Sam2Model: the manifest says sam2.1
    features = model.encode(image)                         # HxWx3 uint8 RGB -> Sam2Embedding (cached)
    out = model.decode(features, prompt)                   # masks, scores, low_res_logits

:class:`Sam2Model` has :class:`~samdeploy.sam.model.SamModel`'s interface (``encode``, ``decode``,
``segment_files``, ``cache``, ``graph``), so code that streams files or reads the cache runs
either family; the predictor and the mask generator are family-specific.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy.engine import Graph
from samdeploy.errors import PackageError
from samdeploy.package import DECODER, SAM2_DECODER_INPUTS, ModelPackage
from samdeploy.sam.graphs import BackendOptions
from samdeploy.sam.images import as_rgb_array
from samdeploy.sam.model import (
    DEFAULT_CACHE_MB,
    EmbeddingCache,
    SamModel,
    check_cache_mb,
    check_encoder_input,
    check_threads,
    open_model,
    run_graph,
)
from samdeploy.sam.prompts import Prompt
from samdeploy.sam2.graphs import FEATURES, decode_graph, sam2_graph


@dataclass(frozen=True)
class Sam2Embedding:
    """An encoded image: ``image_embed`` 1xCxGxG, ``high_res_feats_0`` 1x(C/8)x4Gx4G and
    ``high_res_feats_1`` 1x(C/4)x2Gx2G float32 (read-only), and the image's ``original_size`` (H, W)."""

    image_embed: np.ndarray
    high_res_feats_0: np.ndarray
    high_res_feats_1: np.ndarray
    original_size: tuple[int, int]

    @property
    def embeddings(self) -> np.ndarray:
        """The image embedding (what ``get_image_embedding`` returns)."""
        return self.image_embed

    @property
    def high_res_feats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.high_res_feats_0, self.high_res_feats_1

    @property
    def nbytes(self) -> int:
        return int(self.image_embed.nbytes + self.high_res_feats_0.nbytes + self.high_res_feats_1.nbytes)

    def features(self) -> dict[str, np.ndarray]:
        """The decoder's three feature inputs by name."""
        return {
            "high_res_feats_0": self.high_res_feats_0,
            "high_res_feats_1": self.high_res_feats_1,
            "image_embed": self.image_embed,
        }


class Sam2Model(SamModel):
    """A SAM 2.x package loaded into its graph (see :mod:`samdeploy.sam2.graphs`)."""

    def __init__(
        self,
        package: ModelPackage,
        options: BackendOptions,
        mode: str = "sequential",
        cache_mb: float = DEFAULT_CACHE_MB,
        inside_image: bool = False,
    ) -> None:
        if not package.is_sam2:
            raise PackageError(
                f"model package {package.root} is a SAM package, not SAM 2:"
                " use samdeploy.SamPredictor / SamAutomaticMaskGenerator"
            )
        super().__init__(package, options, mode, cache_mb, inside_image)

    @staticmethod
    def build_graphs(
        package: ModelPackage, options: BackendOptions, inside_image: bool
    ) -> tuple[Graph, Graph, Graph]:
        return sam2_graph(package, options, inside_image)

    @staticmethod
    def build_prepared_graph(package: ModelPackage, options: BackendOptions, inside_image: bool) -> Graph:
        return decode_graph(package, options, inside_image, prepared=True)

    @property
    def family(self) -> str:
        return self.package.family

    def encode(self, image: np.ndarray, image_format: str = "RGB", profile: Any = None) -> Sam2Embedding:  # type: ignore[override]
        """HxWx3 uint8 image -> :class:`Sam2Embedding`, from the cache when this content was seen."""
        rgb = as_rgb_array(image, image_format)
        key = EmbeddingCache.key(rgb) if self.cache.max_bytes else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return hit  # type: ignore[return-value]
        out = run_graph(self.encode_graph, {"image": rgb}, self.executor, profile)
        maps = {}
        for name in FEATURES:
            maps[name] = np.array(out[name], dtype=np.float32)  # own copy, then read-only
            maps[name].setflags(write=False)
        entry = Sam2Embedding(original_size=tuple(out["original_size"]), **maps)  # type: ignore[arg-type]
        if key is not None:
            self.cache.put(key, entry)  # type: ignore[arg-type]
        return entry

    def decode(  # type: ignore[override]
        self,
        embedding: Sam2Embedding,
        prompt: Prompt,
        multimask_output: bool = True,
        return_logits: bool = False,
        profile: Any = None,
    ) -> dict[str, np.ndarray]:
        """One decoder call for a prompt batch of B: ``masks`` BxCxHxW, ``scores`` BxC,
        ``low_res_logits`` BxCxRxR (C = 3 with ``multimask_output``, else 1)."""
        inputs = {
            **embedding.features(),
            "prompt": prompt,
            "original_size": embedding.original_size,
            "multimask_output": bool(multimask_output),
            "return_logits": bool(return_logits),
        }
        return run_graph(self.graph_for(prompt), inputs, self.executor, profile)

    def __repr__(self) -> str:
        return (
            f"Sam2Model({str(self.package.root)!r}, {self.family}, type={self.package.model_type},"
            f" S={self.image_size}, backend={self.backend_summary}, mode={self.mode})"
        )


def _check_package(package: ModelPackage, model: Sam2Model) -> None:
    """Refuse a package whose files do not match its manifest (sizes, tensor names and shapes)."""
    check_encoder_input(package, model.encode_graph.nodes["image_encoder"])
    names = [spec.name for spec in model.decode_graph.nodes["mask_decoder"].input_specs]
    missing = [name for name in SAM2_DECODER_INPUTS if name not in names]
    if missing:
        raise PackageError(
            f"model package {package.root}: {package.model(DECODER).file} lacks the SAM 2 decoder inputs"
            f" {', '.join(missing)}"
        )
    if model.prepared_decode_graph is not None:  # its nodes' inputs were checked as it was built
        model.prepared_decode_graph.validate()


def load_sam2_model(
    path: str | Path | ModelPackage,
    backend: str | None = None,
    mode: str = "sequential",
    providers: list[str] | None = None,
    threads: int | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
    inside_image: bool = False,
    verify: bool = True,
    solo_threads: int | None = None,
) -> Sam2Model:
    """Load a SAM 2.x package folder (or an already loaded package); the arguments are
    :func:`samdeploy.load_model`'s, ``verify`` included (every file's sha256 is checked).

    Raises :class:`PackageError` for a missing, corrupt or non-SAM 2 package,
    :class:`BackendError` for a backend or provider that is not installed and
    :class:`OptionError` for ``threads``, ``solo_threads`` or ``cache_mb`` out of range.
    """
    threads = check_threads(threads)
    solo_count = check_threads(solo_threads)
    check_cache_mb(cache_mb)
    package = path if isinstance(path, ModelPackage) else ModelPackage.load(path)
    if not package.is_sam2:
        raise PackageError(
            f"model package {package.root} is a '{package.family}' package, not SAM 2.x:"
            " use samdeploy.SamPredictor / SamAutomaticMaskGenerator"
        )
    return open_model(
        Sam2Model,
        package,
        _check_package,
        backend,
        mode,
        providers,
        threads,
        cache_mb,
        inside_image,
        verify,
        solo_count,
    )
