"""The model package: a folder that ``samdeploy export`` writes and every runtime reads.

A package holds ``model.json`` (the manifest) and the ONNX files it names. The manifest is the
single source of truth for everything a runtime must know: input size, pixel statistics, where
pre-processing happens, tensor names, shapes and dtypes, precision, and the sha256 of every file.

Layout of ``model.json`` (format version 1)::

    {
      "format": "samdeploy-model",
      "format_version": 1,
      "family": "sam" | "sam2.1" | "sam2",   # optional, "sam" by default; other families do not run here
      "model_type": "vit_b" | "vit_l" | "vit_h" | "sam2.1_hiera_tiny" | ... | "custom",
      "architecture": {...},            # the SAM config, enough to rebuild the torch model
      "image_size": 1024,               # S: the encoder takes 1x3xSxS
      "embedding_size": [64, 64],
      "mask_input_size": [256, 256],
      "pixel_mean": [123.675, 116.28, 103.53],
      "pixel_std": [58.395, 57.12, 57.375],
      "preprocessing": {"resize": "longest_side", "normalize": "runtime", "pad": "runtime"},
      "precision": "fp32" | "int8" | ...,
      "opset": 17,
      "models": {
        "image_encoder": {"file": "image_encoder.onnx", "inputs": [TensorSpec], "outputs": [...]},
        "mask_decoder":  {"file": "mask_decoder.onnx",  "inputs": [...], "outputs": [...]},
        "mask_decoder_low_res": {...}   # optional: the decoder without its upscaled masks output
      },
      "runtime": {"image_encoder": {"backend": "openvino", "precision": "bf16"}, ...},   # optional
      "files": {"image_encoder.onnx": {"sha256": "...", "bytes": 123}, ...},
      "generator": {"points_per_side": 32, ...},   # optional: recommended automatic-mask settings
      "export": {...}                   # export report: versions, timings, simplification, validation
    }

``mask_decoder`` keeps the official six-input, three-output contract. ``mask_decoder_low_res`` (written
by every export; packages from earlier samdeploy versions lack it) is the same prompt encoder and mask decoder
without ``orig_im_size`` and the in-graph upscale to the image size: five inputs, two outputs
(``iou_predictions``, ``low_res_masks``), and in exports from samdeploy 0.2 on a mask filter:
``mask_iou_threshold`` in (float32, one per mask token; ``-inf`` everywhere computes every mask) and
``mask_indices`` out (int64, the prompts whose masks ``low_res_masks`` holds, see
:attr:`ModelPackage.filters_masks`). The runtime upscales the low-res logits itself, only for the
masks it returns, so it prompts with this one when the package has it (see
:attr:`ModelPackage.prompt_decoder`).

``runtime`` (optional) names how a model of the package should run when the user does not choose:
a bf16 package (``precision: "bf16"``) holds the same float32 graphs as its source and asks for each
of them to run on OpenVINO at bf16 inference precision. A runtime that cannot honour it runs the
graphs in float32 (see :func:`samdeploy.sam.model.package_runtime`). Keys besides ``backend`` and
``precision`` are options of that backend: an int8-bf16 package's encoder asks OpenVINO for
``quantization_group`` (the input channels that share one dynamic int8 scale).

A TensorSpec is ``{"name": str, "shape": [int | str, ...], "dtype": "float32"}``; a string in a
shape names a dynamic axis.

A package is untrusted input. :meth:`ModelPackage.load` validates the manifest against the schema
of :mod:`samdeploy.manifest` and refuses a file name that leaves the folder (absolute, ``..``, a
symlink out), a file that is not regular (a FIFO would hang a reader) or not listed in ``files``
with its sha256 and size. :func:`samdeploy.load_model` then verifies every sha256 (cached by file
identity, see :class:`ChecksumCache`; ``verify=False`` skips it for trusted hot paths).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samdeploy import limits
from samdeploy.errors import PackageError
from samdeploy.manifest import (
    DECODER,
    ENCODER,
    FAMILY,
    FORMAT,
    FORMAT_VERSION,
    SAM2_FAMILIES,
    parse_json,
    validate_manifest,
)

MANIFEST = "model.json"
LOW_RES_DECODER = "mask_decoder_low_res"
# The official ONNX decoder contract (segment_anything's scripts/export_onnx_model.py), kept exactly.
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
# The companion decoder takes the same inputs but orig_im_size, and gives these outputs.
LOW_RES_DECODER_INPUTS = DECODER_INPUTS[:-1]
LOW_RES_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")
# The low-res decoder's mask filter (exports from this version on): one IoU threshold per mask token
# in, the indices of the prompts whose masks were computed out (see ModelPackage.filters_masks).
MASK_FILTER_INPUT = "mask_iou_threshold"
MASK_FILTER_OUTPUT = "mask_indices"
# The low-res decoder cut in two for prompts without a mask_input:
# the per-image side, run once per image, and the decoder that prompts with what it gives. Packages
# exported before them lack both.
IMAGE_SIDE = "mask_decoder_image"
PREPARED_DECODER = "mask_decoder_prepared"
IMAGE_SIDE_OUTPUTS = ("image_tokens", "image_keys", "image_values", "image_queries")
PREPARED_DECODER_INPUTS = (*IMAGE_SIDE_OUTPUTS, "point_coords", "point_labels")
# SAM 2.x packages (family "sam2.1" or "sam2"): the encoder's three feature maps, and samdeploy's SAM 2
# decoder contract (see samdeploy.export.sam2).
SAM_FAMILY = FAMILY
# The order matters to consumers that read tensors by position (X-AnyLabeling's SAM 2 models).
SAM2_ENCODER_OUTPUTS = ("high_res_feats_0", "high_res_feats_1", "image_embed")
SAM2_DECODER_INPUTS = (
    "image_embed",
    "high_res_feats_0",
    "high_res_feats_1",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
SAM2_DECODER_OUTPUTS = ("low_res_masks", "iou_predictions", "object_score_logits")
# SAM 2's decoder cut in two (the same roles as SAM 1's): the per-image side also lays the two
# high-resolution maps out as rows in the order the output upscaling makes its pixels.
SAM2_IMAGE_SIDE_INPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")
SAM2_IMAGE_SIDE_OUTPUTS = (*IMAGE_SIDE_OUTPUTS, "high_res_rows_0", "high_res_rows_1")
SAM2_PREPARED_DECODER_INPUTS = (*SAM2_IMAGE_SIDE_OUTPUTS, "point_coords", "point_labels")

__all__ = [
    "DECODER",
    "ENCODER",
    "FAMILY",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelPackage",
    "TensorSpec",
]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (ints, or strings for dynamic axes) and numpy dtype name of one model tensor."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(name=data["name"], shape=tuple(data["shape"]), dtype=data["dtype"])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class ModelEntry:
    """One ONNX model of a package and the tensors it takes and gives."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def open_regular(path: Path) -> int:
    """Open ``path`` for reading and return the descriptor, refusing anything but a regular file.

    Opened non-blocking, so a FIFO or a device fails the check instead of hanging the reader.
    Raises :class:`PackageError`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackageError(f"{path} is not a regular file (a FIFO, device or folder)")
    return fd


def _sha256_fd(fd: int, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := os.read(fd, chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a regular file, read in chunks so multi-GB weights do not fill memory."""
    fd = open_regular(Path(path))
    try:
        return _sha256_fd(fd, chunk)
    finally:
        os.close(fd)


def describe_files(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``files`` section of a manifest: sha256 and size of each named file under ``root``."""
    return {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size} for name in names
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json`` into ``root`` (pretty-printed, stable key order) and return its path.

    A manifest holding NaN or an infinity is refused (:class:`PackageError`, nothing written): the
    JSON standard has no such numbers, and a validation figure of NaN would read as a pass."""
    try:
        text = json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        raise PackageError(
            f"the manifest of {root} would hold a NaN or infinite value; nothing was written"
        ) from None
    path = Path(root) / MANIFEST
    path.write_text(text + "\n")
    return path


def cache_dir() -> Path:
    """samdeploy's per-user cache folder: ``$SAMDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/samdeploy``,
    else ``~/.cache/samdeploy``."""
    if explicit := os.environ.get("SAMDEPLOY_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "samdeploy"


class ChecksumCache:
    """The sha256 of files already hashed, keyed by their identity on disk, so a package is hashed
    once, not at every load.

    The key is the resolved path with size, mtime_ns, ctime_ns, inode and device: rewriting a
    file changes its ctime (which no ordinary tool can set back), so a modified file is hashed
    again even when its size and mtime are restored. Entries live in memory and in
    ``checksums.json`` under :func:`cache_dir` (the newest :attr:`MAX_ENTRIES`); a cache folder
    that cannot be written leaves the memory one. The cache holds digests this process computed
    itself, never a manifest's claim.
    """

    MAX_ENTRIES = 512
    FILE = "checksums.json"

    def __init__(self) -> None:
        self._memory: dict[str, str] = {}
        self._loaded_from: Path | None = None
        self._lock = threading.Lock()

    @staticmethod
    def key(path: Path, info: os.stat_result) -> str:
        return f"{path}|{info.st_size}|{info.st_mtime_ns}|{info.st_ctime_ns}|{info.st_ino}|{info.st_dev}"

    def _file(self) -> Path:
        return cache_dir() / self.FILE

    def _load(self) -> None:
        """Merge the on-disk entries into memory (once per cache folder)."""
        path = self._file()
        if self._loaded_from == path:
            return
        self._loaded_from = path
        try:
            with open(path, "rb") as handle:
                stored = json.loads(handle.read(4 * 2**20))
        except (OSError, ValueError):
            return
        if isinstance(stored, dict):
            for key, digest in stored.items():
                if isinstance(key, str) and isinstance(digest, str) and len(digest) == 64:
                    self._memory.setdefault(key, digest)

    def get(self, key: str) -> str | None:
        with self._lock:
            self._load()
            return self._memory.get(key)

    def put(self, key: str, digest: str) -> None:
        with self._lock:
            self._load()
            self._memory.pop(key, None)
            self._memory[key] = digest
            while len(self._memory) > self.MAX_ENTRIES:
                self._memory.pop(next(iter(self._memory)))
            path = self._file()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, staging = tempfile.mkstemp(dir=path.parent, prefix=".checksums-", suffix=".json")
                with os.fdopen(fd, "w") as handle:
                    json.dump(self._memory, handle)
                os.replace(staging, path)  # atomic: another process reads the old or the new file
            except OSError:
                pass  # a read-only cache folder: the memory cache still saves the work

    def clear(self) -> None:
        """Forget every entry, in memory and on disk."""
        with self._lock:
            self._memory.clear()
            self._loaded_from = None
            self._file().unlink(missing_ok=True)


#: The process-wide checksum cache used by :meth:`ModelPackage.verify`.
CHECKSUMS = ChecksumCache()


def _inside(root: Path, name: str, what: str) -> Path:
    """The resolved path of file ``name`` of the package at (resolved) ``root``: it must exist,
    stay inside ``root`` after following every symlink, and be a regular file."""
    candidate = root / name
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise PackageError(f"model package {root} is missing {name}") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission problem
        raise PackageError(f"model package {root}: cannot resolve {name}: {exc}") from None
    if not resolved.is_relative_to(root):
        raise PackageError(
            f"model package {root}: {what} {name} leads outside the package folder (to {resolved});"
            " a package may use only its own files"
        )
    mode = resolved.stat().st_mode
    if not stat.S_ISREG(mode):
        raise PackageError(f"model package {root}: {what} {name} is not a regular file")
    return resolved


#: Entries a package folder may hold (files and folders, at any depth): a package has a handful.
MAX_FOLDER_ENTRIES = 10_000


def _check_folder(given: Path, root: Path) -> None:
    """Refuse a package folder holding anything but regular files, folders and symlinks that stay
    inside it. An ONNX file can name external-data files the manifest does not list; ONNX Runtime
    keeps those names inside the model's folder, and this keeps the folder itself from reaching
    out (a symlink to another file) or hanging a reader (a FIFO, a device)."""
    seen = 0
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise PackageError(f"model package {given} holds more than {MAX_FOLDER_ENTRIES:,} files")
            path = Path(folder) / name
            info = path.lstat()
            relative = path.relative_to(root)
            if stat.S_ISLNK(info.st_mode):
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):
                    raise PackageError(
                        f"model package {given}: {relative} is a broken or looping symlink"
                    ) from None
                if not target.is_relative_to(root):
                    raise PackageError(
                        f"model package {given}: {relative} leads outside the package folder (a symlink to"
                        f" {target}); a package may use only its own files"
                    )
            elif not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                raise PackageError(
                    f"model package {given}: {relative} is not a regular file (a FIFO, device or socket)"
                )


def _read_manifest(given: Path, root: Path) -> tuple[str, Path]:
    """The text of ``model.json`` of the package at ``given`` (resolved: ``root``): a regular file
    inside the folder, of bounded size."""
    manifest_path = given / MANIFEST
    if not os.path.lexists(manifest_path):
        raise PackageError(f"not a samdeploy model package (no {MANIFEST}): {root}")
    resolved = _inside(root, MANIFEST, "the manifest")
    fd = open_regular(resolved)
    try:
        size = os.fstat(fd).st_size
        limits.check(size, limits.MAX_MANIFEST_BYTES, f"{manifest_path} size", PackageError)
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8"), manifest_path
    except UnicodeDecodeError as exc:
        raise PackageError(f"corrupt {manifest_path}: {exc}") from None


@dataclass
class ModelPackage:
    """A loaded (and checked) model package. Use :meth:`load`; it never imports torch."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)
    #: Resolved path of every file of ``files``, each checked to be a regular file inside ``root``.
    paths: dict[str, Path] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path, verify: bool = False) -> ModelPackage:
        """Read ``model.json`` from a package folder and check it before anything trusts it.

        Checks: the manifest against its schema (:mod:`samdeploy.manifest`); every file it names
        is listed in ``files`` with its sha256, resolves inside the package folder (no absolute
        path, no ``..``, no symlink leading out), is a regular file (never a FIFO or device) and
        has the listed size; the folder holds nothing but regular files, folders and symlinks
        that stay inside it (an ONNX file may name external-data files of its own). With ``verify=True`` also recompute every file's sha256 now
        (:meth:`verify`; slow for big models). Raises :class:`PackageError` with a one-line
        message on any problem.
        """
        given = Path(path)
        if not given.exists():
            raise PackageError(f"model package not found: {given}")
        if not given.is_dir():
            raise PackageError(f"model package must be a folder with {MANIFEST}: {given}")
        root = given.resolve()
        text, manifest_path = _read_manifest(given, root)
        manifest = parse_json(text, str(manifest_path))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PackageError(f"not a samdeploy model package ({manifest_path} has no format '{FORMAT}')")
        version = manifest.get("format_version")
        if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
            raise PackageError(
                f"{manifest_path} has format version {version}; this samdeploy reads up to {FORMAT_VERSION}:"
                " upgrade samdeploy"
            )
        validate_manifest(text, str(manifest_path))
        _check_folder(given, root)
        paths = {}
        for name, info in manifest["files"].items():
            resolved = _inside(root, name, "file")
            size = resolved.stat().st_size
            if size != info["bytes"]:
                raise PackageError(
                    f"model package {root}: {name} has {size} bytes, the manifest says {info['bytes']}"
                    " (corrupt or replaced file; export the package again)"
                )
            paths[name] = resolved
        package = cls(root=given, manifest=manifest, paths=paths)
        if verify:
            package.verify()
        return package

    def verify(self, cache: bool = False) -> dict[str, str]:
        """Recompute each file's sha256; raise :class:`PackageError` on the first mismatch.

        ``cache=True`` reuses digests of :data:`CHECKSUMS` for files unchanged on disk since they
        were hashed (what :func:`samdeploy.load_model` does); ``False`` hashes every byte now.
        Each file is opened once, checked to be a regular file and hashed from that descriptor.
        Returns ``{file name: sha256}`` of the verified files.
        """
        verified = {}
        for name, info in self.manifest["files"].items():
            path = self.paths.get(name) or _inside(self.root.resolve(), name, "file")
            fd = open_regular(path)
            try:
                identity = os.fstat(fd)
                if identity.st_size != info["bytes"]:
                    raise PackageError(
                        f"{path} has {identity.st_size} bytes, the manifest says {info['bytes']}"
                        " (corrupt or replaced file; export the package again)"
                    )
                key = ChecksumCache.key(path, identity)
                digest = CHECKSUMS.get(key) if cache else None
                if digest is None:
                    digest = _sha256_fd(fd)
                    CHECKSUMS.put(key, digest)
            finally:
                os.close(fd)
            if digest != info["sha256"]:
                raise PackageError(
                    f"checksum mismatch for {path}: the file is corrupt or was modified"
                    " (export the package again)"
                )
            verified[name] = digest
        return verified

    def model(self, role: str) -> ModelEntry:
        """The ``image_encoder``, ``mask_decoder`` or ``mask_decoder_low_res`` entry of the manifest."""
        entry = self.manifest["models"][role]
        return ModelEntry(
            file=entry["file"],
            inputs=tuple(TensorSpec.from_json(t) for t in entry["inputs"]),
            outputs=tuple(TensorSpec.from_json(t) for t in entry["outputs"]),
        )

    def model_path(self, role: str) -> Path:
        """Absolute path of the ONNX file of a model role (see :meth:`model`), checked at load to
        be a regular file inside the package."""
        name = self.manifest["models"][role]["file"]
        return self.paths.get(name) or _inside(self.root.resolve(), name, "file")

    @property
    def prompt_decoder(self) -> str:
        """The role the runtime prompts with: the low-res companion decoder when the package has it."""
        return LOW_RES_DECODER if LOW_RES_DECODER in self.manifest["models"] else DECODER

    @property
    def prompt_decoder_inputs(self) -> tuple[str, ...]:
        """Input names of :attr:`prompt_decoder`, in the official order (then the mask filter's)."""
        if self.prompt_decoder == DECODER:
            return DECODER_INPUTS
        return LOW_RES_DECODER_INPUTS + ((MASK_FILTER_INPUT,) if self.filters_masks else ())

    @property
    def has_prepared_decoder(self) -> bool:
        """Whether the package has its low-res decoder cut in two for prompts without a
        ``mask_input``: ``mask_decoder_image`` (once per image: the image tokens and the first
        transformer layer's projections of them) and ``mask_decoder_prepared`` (per prompt batch,
        on those). Interactive prompting then skips about a third of a one-point decoder call
        (0.8 of 2.6 GFLOP for vit_b)."""
        models = self.manifest["models"]
        return IMAGE_SIDE in models and PREPARED_DECODER in models

    @property
    def filters_masks(self) -> bool:
        """Whether the low-res decoder takes ``mask_iou_threshold`` and gives ``mask_indices``: it then
        upscales only the prompts with a mask token above its threshold (the automatic generator's
        ``pred_iou_thresh``), and ``low_res_masks`` holds the rows of the prompts in ``mask_indices``.
        Packages exported before it lack the filter and compute every mask."""
        return self.mask_filter_tokens > 0

    @property
    def mask_filter_tokens(self) -> int:
        """The number of mask tokens ``mask_iou_threshold`` takes (0: no mask filter)."""
        entry = self.manifest["models"].get(LOW_RES_DECODER)
        specs = [t for t in entry["inputs"] if t["name"] == MASK_FILTER_INPUT] if entry is not None else []
        shape = specs[0]["shape"] if specs else []
        return shape[0] if len(shape) == 1 and isinstance(shape[0], int) and shape[0] > 0 else 0

    @property
    def encoder_path(self) -> Path:
        return self.model_path(ENCODER)

    @property
    def decoder_path(self) -> Path:
        return self.model_path(DECODER)

    @property
    def generator(self) -> dict[str, Any]:
        """Recommended ``SamAutomaticMaskGenerator`` settings of this model ({} when none)."""
        return {
            key: value for key, value in (self.manifest.get("generator") or {}).items() if value is not None
        }

    @property
    def model_type(self) -> str:
        return self.manifest["model_type"]

    @property
    def family(self) -> str:
        """``sam`` (SAM 1; packages without the field are SAM 1), ``sam2.1`` or ``sam2``; packages
        of other (well-formed) families load but do not run here."""
        return str(self.manifest.get("family", SAM_FAMILY))

    @property
    def is_sam2(self) -> bool:
        return self.family in SAM2_FAMILIES

    @property
    def image_size(self) -> int:
        """Side S of the square encoder input (1024 for the official models)."""
        return int(self.manifest["image_size"])

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """Size of the low-resolution mask logits (4x the embedding grid: 256x256 officially)."""
        size = self.manifest.get("mask_input_size") or [self.image_size // 4] * 2
        return int(size[0]), int(size[1])

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.manifest["pixel_mean"])  # type: ignore[return-value]

    @property
    def pixel_std(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.manifest["pixel_std"])  # type: ignore[return-value]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    def runtime(self, role: str) -> dict[str, str]:
        """How the package asks model ``role`` to run (``backend``, ``precision``); {} for no preference."""
        return dict((self.manifest.get("runtime") or {}).get(role, {}))

    @property
    def export_report(self) -> dict[str, Any]:
        return self.manifest.get("export", {})
