"""A loaded SAM model package: its graph, executor and embedding cache. Never imports torch.

model = load_model("models/sam_vit_b")     # or load_model() for the embedded default model
embedding = model.encode(image)             # HxWx3 uint8 RGB -> ImageEmbedding (cached by content)
out = model.decode(embedding, prompt)       # masks, scores, low_res_logits
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samdeploy import limits
from samdeploy.engine import Graph, make_executor
from samdeploy.engine.backends import backend_class
from samdeploy.errors import (
    BackendError,
    GraphError,
    NodeError,
    OptionError,
    PackageError,
    PromptLimitError,
    SamDeployError,
)
from samdeploy.package import ENCODER, FAMILY, ModelPackage
from samdeploy.sam.blas import hold_single_threaded_blas
from samdeploy.sam.graphs import (
    EMBEDDINGS,
    BackendOptions,
    RoleRuntime,
    decode_graph,
    sam_graph,
    segment_files_graph,
)
from samdeploy.sam.images import DEFAULT_MAX_PIXELS, as_rgb_array
from samdeploy.sam.prompts import Prompt
from samdeploy.sam.results import Segmentation
from samdeploy.sam.transforms import preprocess_shape

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
MODES = ("sequential", "task", "pipeline")
DEFAULT_CACHE_MB = 64.0  # 16 vit_b embeddings (4 MiB each)


@dataclass(frozen=True)
class ImageEmbedding:
    """An encoded image: ``embeddings`` 1xCxhxw float32 (read-only), the image's ``original_size``
    (H, W) and ``input_size`` (newh, neww): its size inside the SxS encoder input."""

    embeddings: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return int(self.embeddings.nbytes)


def check_cache_mb(cache_mb: float) -> float:
    """``cache_mb`` as a float, or :class:`OptionError` unless it is a number in
    ``[0, limits.MAX_CACHE_MB]``."""
    if isinstance(cache_mb, bool) or not isinstance(cache_mb, (int, float, np.integer, np.floating)):
        raise OptionError(f"cache_mb must be a number of MiB (0 disables the cache), got {cache_mb!r}")
    if not np.isfinite(cache_mb) or cache_mb < 0:
        raise OptionError(f"cache_mb must be 0 (no cache) or a positive number of MiB, got {cache_mb!r}")
    limits.check(cache_mb, limits.MAX_CACHE_MB, error=OptionError)
    return float(cache_mb)


def check_threads(threads: int | None) -> int:
    """Intra-op threads as the backends take them (0: their default), or :class:`OptionError`
    unless ``threads`` is None or an integer in ``[1, limits.max_threads()]``."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise OptionError(f"threads must be a positive integer (or None for the default), got {threads!r}")
    cpus = limits.max_threads()
    if threads > cpus:  # more threads than CPUs only wait for each other (1000 of them never finish)
        raise OptionError(f"threads is {threads}, more than the {cpus} CPUs this process may use")
    return int(threads)


class EmbeddingCache:
    """Least-recently-used image embeddings, keyed by image content, bounded in megabytes.

    ``hits`` and ``misses`` count lookups; ``max_mb=0`` disables caching. Thread-safe.
    """

    def __init__(self, max_mb: float = DEFAULT_CACHE_MB) -> None:
        self.max_bytes = int(check_cache_mb(max_mb) * 2**20)
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(rgb: np.ndarray) -> str:
        """Content hash of an HxWx3 uint8 RGB image (pixels and shape). Taken after conversion to
        RGB, so a BGR array and its RGB twin share one entry."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{rgb.shape}|{rgb.dtype}".encode())
        digest.update(np.ascontiguousarray(rgb).data)
        return digest.hexdigest()

    def get(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: ImageEmbedding) -> None:
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache({len(self)} images, {self.nbytes / 2**20:.1f}/{self.max_bytes / 2**20:.1f} MB,"
            f" hits={self.hits}, misses={self.misses})"
        )


@dataclass(frozen=True)
class FileResult:
    """One image file of :meth:`SamModel.segment_files`: its image and segmentation, or its error."""

    index: int
    path: Path
    image: np.ndarray | None
    segmentation: Segmentation | None
    error: Exception | None = None


def run_graph(graph: Graph, inputs: dict[str, Any], executor: Any, profile: Any = None) -> dict[str, Any]:
    """Run ``graph`` on one item; a user error inside a node comes out as itself (a
    :class:`PromptError`, not a :class:`NodeError` wrapping it)."""
    try:
        return graph.run(inputs, executor=executor, profile=profile)
    except NodeError as exc:
        if isinstance(exc.cause, SamDeployError):
            raise exc.cause from None
        raise


class SamModel:
    """A SAM model package loaded into its graph (see :mod:`samdeploy.sam.graphs`).

    ``graph`` is the five-node graph; ``encode_graph`` / ``decode_graph`` its two halves, and
    ``prepared_decode_graph`` (None when the package lacks the prepared decoder) the decode graph
    that prompts without a ``mask_input`` take. The embedding ``cache`` is shared by every
    predictor of this model.
    """

    def __init__(
        self,
        package: ModelPackage,
        options: BackendOptions,
        mode: str = "sequential",
        cache_mb: float = DEFAULT_CACHE_MB,
        inside_image: bool = False,
    ) -> None:
        if mode not in MODES:
            raise GraphError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        self.package = package
        self.options = options
        self.mode = mode
        self.graph, self.encode_graph, self.decode_graph = self.build_graphs(package, options, inside_image)
        self.prepared_decode_graph = (
            self.build_prepared_graph(package, options, inside_image)
            if package.has_prepared_decoder
            else None
        )
        self.executor = make_executor(mode)
        self.cache = EmbeddingCache(cache_mb)
        # numpy's BLAS on one thread for the model's life, set once on the loading thread:
        # switching it per call from several predicting threads cost ~40x (see sam/blas.py).
        self._blas = hold_single_threaded_blas()
        weakref.finalize(self, self._blas.release)

    @staticmethod
    def build_graphs(
        package: ModelPackage, options: BackendOptions, inside_image: bool
    ) -> tuple[Graph, Graph, Graph]:
        """The full graph and its encode and decode halves (the family's graphs)."""
        return sam_graph(package, options, inside_image)

    @staticmethod
    def build_prepared_graph(package: ModelPackage, options: BackendOptions, inside_image: bool) -> Graph:
        """The decode graph for prompts without a ``mask_input`` (the package has the decoder cut in two)."""
        return decode_graph(package, options, inside_image, prepared=True)

    def graph_for(self, prompt: Prompt) -> Graph:
        """The decode graph ``prompt`` takes: the prepared one (the decoder's image side once per
        image, the same answers) when it has no ``mask_input`` and the package has the pair."""
        if prompt.mask_input is None and self.prepared_decode_graph is not None:
            return self.prepared_decode_graph
        return self.decode_graph

    @property
    def backend_summary(self) -> str:
        """The backends the two halves run on, e.g. ``onnxruntime`` or
        ``image encoder on openvino (bf16), mask decoder on openvino (bf16)``."""
        halves = [
            (label, self.options.for_role(role))
            for label, role in (("image encoder", ENCODER), ("mask decoder", self.package.prompt_decoder))
        ]
        if all(
            runtime.backend == self.options.backend and runtime.precision is None and not runtime.options
            for _, runtime in halves
        ):
            return self.options.backend
        described = []
        for label, runtime in halves:
            details = [runtime.precision] if runtime.precision else []
            details += [f"{key} {value}" for key, value in runtime.options]
            described.append(
                f"{label} on {runtime.backend}" + (f" ({', '.join(details)})" if details else "")
            )
        return ", ".join(described)

    @property
    def image_size(self) -> int:
        """S: the encoder's square input side."""
        return self.package.image_size

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """(R, R): size of the low-res logits and of ``mask_input``."""
        return self.package.mask_input_size

    def encode(self, image: np.ndarray, image_format: str = "RGB", profile: Any = None) -> ImageEmbedding:
        """HxWx3 uint8 image -> :class:`ImageEmbedding`, from the cache when this content was seen."""
        rgb = as_rgb_array(image, image_format)
        key = EmbeddingCache.key(rgb) if self.cache.max_bytes else None
        if key is not None and (hit := self.cache.get(key)) is not None:
            return hit
        out = run_graph(self.encode_graph, {"image": rgb}, self.executor, profile)
        embeddings = np.array(out[EMBEDDINGS], dtype=np.float32)  # own copy, then read-only
        embeddings.setflags(write=False)
        original_size = tuple(out["original_size"])
        entry = ImageEmbedding(embeddings, original_size, preprocess_shape(*original_size, self.image_size))
        if key is not None:
            self.cache.put(key, entry)
        return entry

    def decode(
        self,
        embedding: ImageEmbedding,
        prompt: Prompt,
        multimask_output: bool = True,
        return_logits: bool = False,
        profile: Any = None,
    ) -> dict[str, np.ndarray]:
        """One decoder call for a prompt batch of B: ``masks`` BxCxHxW, ``scores`` BxC,
        ``low_res_logits`` BxCxRxR (C = 3 with ``multimask_output``, else 1).

        Safe to call from several threads at once (as :meth:`encode` is). Raises
        :class:`PromptLimitError` when the masks would exceed ``limits.MAX_MASK_PIXELS``.
        """
        height, width = embedding.original_size
        pixels = prompt.batch * (3 if multimask_output else 1) * height * width
        limits.check(
            pixels,
            limits.MAX_MASK_PIXELS,
            f"mask pixels per call ({prompt.batch} prompt(s) x {3 if multimask_output else 1} mask(s)"
            f" of {width}x{height})",
            PromptLimitError,
        )
        inputs = {
            EMBEDDINGS: embedding.embeddings,
            "prompt": prompt,
            "original_size": embedding.original_size,
            "multimask_output": bool(multimask_output),
            "return_logits": bool(return_logits),
        }
        out = run_graph(self.graph_for(prompt), inputs, self.executor, profile)
        # Prompts are bounded so that a sound model stays finite; NaN here means broken weights,
        # which would otherwise come out as empty masks with no word of warning.
        if not (np.isfinite(out["scores"]).all() and np.isfinite(out["low_res_logits"]).all()):
            raise PackageError(
                f"model package {self.package.root} gave NaN or infinite scores or logits: its weights"
                " are broken (export it again from a sound checkpoint)"
            )
        return out

    def segment_files(
        self,
        paths: Iterable[str | Path],
        prompt: Prompt,
        multimask_output: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        profile: Any = None,
    ) -> Iterator[FileResult]:
        """Stream image files through reader + the five-node graph with this model's executor
        (``pipeline``: each node a worker, so reading, encoding and decoding of successive images
        overlap). Yields a :class:`FileResult` per file, in order; a bad file fails alone, with
        the user-facing error (an :class:`ImageError`, :class:`PromptError`...) in ``error``."""
        paths = [Path(p) for p in paths]
        graph = segment_files_graph(self.graph, max_pixels)
        items = (
            {"path": path, "prompt": prompt, "multimask_output": multimask_output, "return_logits": False}
            for path in paths
        )
        for result in graph.stream(items, executor=self.mode, profile=profile):
            path = paths[result.index]
            if result.error is not None:
                cause = result.error.cause
                error = cause if isinstance(cause, SamDeployError) else result.error
                yield FileResult(result.index, path, None, None, error)
                continue
            out = result.outputs
            segmentation = Segmentation(out["masks"][0], out["scores"][0], out["low_res_logits"][0])
            yield FileResult(result.index, path, out["image"], segmentation)

    def close(self) -> None:
        """Release the inference sessions and executor threads."""
        self.executor.close()
        self.graph.close()
        if self.prepared_decode_graph is not None:
            self.prepared_decode_graph.close()
        self._blas.release()

    def __enter__(self) -> SamModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SamModel({str(self.package.root)!r}, type={self.package.model_type}, S={self.image_size},"
            f" backend={self.backend_summary}, mode={self.mode})"
        )


def check_encoder_input(package: ModelPackage, encoder: Any) -> None:
    """Refuse an encoder (Inference node) whose input is not 1x3xSxS for the manifest's S."""
    size = package.image_size
    shape = tuple(encoder.input_specs[0].shape)
    if len(shape) != 4 or shape[1] != 3 or shape[2:] != (size, size):
        raise PackageError(
            f"model package {package.root}: {package.model(ENCODER).file} takes {list(shape)}, but the manifest"
            f" says image_size {size} (expected [1, 3, {size}, {size}])"
        )


def _check_package(package: ModelPackage, model: SamModel) -> None:
    """Refuse a package whose models do not match its manifest (tensor names and shapes); file
    sizes and checksums were checked by :meth:`ModelPackage.load` and :meth:`ModelPackage.verify`."""
    root = package.root
    check_encoder_input(package, model.encode_graph.nodes["image_encoder"])
    decoder = model.decode_graph.nodes["mask_decoder"]
    names = [spec.name for spec in decoder.input_specs]
    missing = [name for name in package.prompt_decoder_inputs if name not in names]
    if missing:
        raise PackageError(
            f"model package {root}: {package.model(package.prompt_decoder).file} lacks the SAM decoder"
            f" inputs {', '.join(missing)}"
        )
    mask_shape = next(spec.shape for spec in decoder.input_specs if spec.name == "mask_input")
    if tuple(mask_shape[-2:]) != package.mask_input_size:
        raise PackageError(
            f"model package {root}: the decoder takes mask_input {list(mask_shape)}, but the manifest"
            f" says mask_input_size {list(package.mask_input_size)}"
        )
    if model.prepared_decode_graph is not None:
        model.prepared_decode_graph.validate()


def package_runtime(package: ModelPackage, backend: str | None) -> tuple[RoleRuntime, ...]:
    """How each model the package asks to run its own way runs (a bf16 package: encoder and
    decoders on OpenVINO at bf16), when the user's ``backend`` allows it.

    An explicit ``backend`` other than the one asked for is the user's choice: the float32 graphs
    run there. A request this machine cannot honour (the backend not installed, or no native bf16)
    is warned about (``RuntimeWarning``), and the float32 graphs run on ONNX Runtime. Keys of the
    request besides ``backend`` and ``precision`` are backend options (``quantization_group``).
    """
    wanted = [
        RoleRuntime(
            role,
            request["backend"],
            request.get("precision", "f32"),
            tuple(
                sorted((key, value) for key, value in request.items() if key not in ("backend", "precision"))
            ),
        )
        for role in package.manifest["models"]
        if (request := package.runtime(role)).get("backend")
    ]
    honoured, refused = [], {}
    for runtime in wanted:
        if backend is not None and backend != runtime.backend:
            continue
        try:
            supported = backend_class(runtime.backend).supports_precision(runtime.precision)
            reason = f"this machine has no native {runtime.precision} arithmetic"
        except BackendError as exc:
            supported, reason = False, str(exc)
        if supported:
            honoured.append(runtime)
        else:
            refused.setdefault((runtime.backend, runtime.precision, reason), []).append(runtime.role)
    for (wanted_backend, wanted_precision, reason), roles in refused.items():
        warnings.warn(
            f"model package {package.root} asks for {', '.join(roles)} on {wanted_backend} at"
            f" {wanted_precision}, but {reason}: running the graphs in float32 on"
            f" {backend or 'onnxruntime'} instead",
            RuntimeWarning,
            stacklevel=3,
        )
    return tuple(honoured)


def load_model(
    path: str | Path | None = None,
    backend: str | None = None,
    mode: str = "sequential",
    providers: list[str] | None = None,
    threads: int | None = None,
    cache_mb: float = DEFAULT_CACHE_MB,
    inside_image: bool = False,
    verify: bool = True,
    solo_threads: int | None = None,
) -> SamModel:
    """Load a model package folder (``None``: the default model embedded in samdeploy).

    ``backend``: an inference backend name (``onnxruntime``, ``openvino``) for both models; None
    (the default) runs them on ONNX Runtime, or as the package asks (a bf16 package: OpenVINO at
    bf16 inference precision; see :func:`package_runtime`, which falls back to float32 with a
    warning where that cannot run). ``mode``: the executor
    (``sequential``, ``task`` or ``pipeline``); ``providers``: ONNX Runtime execution providers
    (e.g. ``["cuda"]``); ``threads``: intra-op threads (None: the backend's default);
    ``cache_mb``: size bound of the embedding cache (0 disables it); ``inside_image``: refuse points
    and boxes outside the image instead of passing them to the model as the official predictor does.
    ``verify``: check every file's sha256 against the manifest before loading it (the default,
    also for the embedded model). Each file is hashed once and its digest remembered by file
    identity (:class:`samdeploy.package.ChecksumCache`), so later loads cost a ``stat`` per file;
    ``False`` skips the check for trusted packages on hot paths. ``solo_threads`` (with ``threads``
    set lower): intra-op threads of a decoder call that starts while no other model call runs in
    this process (a server's lone click takes every core, concurrent ones ``threads`` each); the
    decoders get a second session for it, the encoder does not.

    Both models are loaded now, so a bad package fails here: :class:`PackageError` for a missing,
    malformed or modified package (see :meth:`ModelPackage.load`) or one of another model family,
    :class:`BackendError` for a model file the backend cannot load (or a backend or provider that
    is not installed), :class:`OptionError` for ``threads``, ``solo_threads`` or ``cache_mb`` out
    of range.
    """
    if path is None:
        if not (DEFAULT_MODEL / "model.json").is_file():
            raise PackageError(
                "this samdeploy has no embedded default model; pass a model package folder"
                " (made with `samdeploy export CHECKPOINT --output DIR`)"
            )
        path = DEFAULT_MODEL
    thread_count = check_threads(threads)
    solo_count = check_threads(solo_threads)
    check_cache_mb(cache_mb)
    package = ModelPackage.load(path)
    if package.is_sam2:
        # The family dispatch: a SAM 2.x package runs on samdeploy.sam2's graphs.
        from samdeploy.sam2.model import load_sam2_model

        return load_sam2_model(
            package, backend, mode, providers, threads, cache_mb, inside_image, verify, solo_threads
        )
    if package.family != FAMILY:
        raise PackageError(
            f"model package {package.root} holds a '{package.family}' model; this samdeploy runs"
            f" '{FAMILY}', 'sam2.1' and 'sam2' packages only"
        )
    return open_model(
        SamModel,
        package,
        _check_package,
        backend,
        mode,
        providers,
        thread_count,
        cache_mb,
        inside_image,
        verify,
        solo_count,
    )


def open_model(
    model_class: type[SamModel],
    package: ModelPackage,
    check: Any,
    backend: str | None,
    mode: str,
    providers: list[str] | None,
    threads: int | None,
    cache_mb: float,
    inside_image: bool,
    verify: bool = True,
    solo_threads: int = 0,
) -> Any:
    """``model_class`` (a SAM or SAM 2 model) on ``package``, checked by ``check(package, model)``
    (and every file's sha256 first with ``verify``), with its sessions created; a failure closes
    what was opened (see :func:`load_model`)."""
    if verify:
        package.verify(cache=True)
    options = BackendOptions(
        backend=backend or "onnxruntime",
        providers=providers,
        threads=threads,
        solo_threads=solo_threads,
        roles=package_runtime(package, backend),
    )
    model = model_class(package, options, mode=mode, cache_mb=cache_mb, inside_image=inside_image)
    try:
        check(package, model)
        model.graph.setup()
        if model.prepared_decode_graph is not None:
            model.prepared_decode_graph.setup()
    except BaseException:
        model.close()
        raise
    return model
