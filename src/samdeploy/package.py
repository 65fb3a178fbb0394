"""The model package: a folder that ``samdeploy export`` writes and every runtime reads.

A package holds ``model.json`` (the manifest) and the ONNX files it names. The manifest is the
single source of truth for everything a runtime must know: input size, pixel statistics, where
pre-processing happens, tensor names, shapes and dtypes, precision, and the sha256 of every file.

Layout of ``model.json`` (format version 1)::

    {
      "format": "samdeploy-model",
      "format_version": 1,
      "family": "sam" | "sam2.1" | "sam2",   # optional: absent means SAM 1
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
      "export": {...}                   # export report: versions, timings, simplification, validation
    }

``mask_decoder`` keeps the official six-input, three-output contract. ``mask_decoder_low_res`` (written
by every export; packages from earlier samdeploy versions lack it) is the same prompt encoder and mask decoder
without ``orig_im_size`` and the in-graph upscale to the image size: five inputs, two outputs
(``iou_predictions``, ``low_res_masks``). The runtime upscales the low-res logits itself, only for the
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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samdeploy.errors import PackageError

FORMAT = "samdeploy-model"
FORMAT_VERSION = 1
MANIFEST = "model.json"
ENCODER = "image_encoder"
DECODER = "mask_decoder"
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
# SAM 2.x packages (family "sam2.1" or "sam2"): the encoder's three feature maps, and samdeploy's SAM 2
# decoder contract (see samdeploy.export.sam2).
SAM_FAMILY = "sam"
SAM2_FAMILIES = ("sam2.1", "sam2")
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

_REQUIRED_KEYS = (
    "format",
    "format_version",
    "model_type",
    "image_size",
    "pixel_mean",
    "pixel_std",
    "models",
    "files",
)


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


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_files(root: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The ``files`` section of a manifest: sha256 and size of each named file under ``root``."""
    return {
        name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size} for name in names
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json`` into ``root`` (pretty-printed, stable key order) and return its path."""
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


@dataclass
class ModelPackage:
    """A loaded (and checked) model package. Use :meth:`load`; it never imports torch."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, path: str | Path, verify: bool = False) -> ModelPackage:
        """Read ``model.json`` from a package folder and check it is complete.

        With ``verify=True`` also recompute every file's sha256 (slow for big models).
        Raises :class:`PackageError` with a one-line message on any problem.
        """
        root = Path(path)
        if not root.exists():
            raise PackageError(f"model package not found: {root}")
        if not root.is_dir():
            raise PackageError(f"model package must be a folder with {MANIFEST}: {root}")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise PackageError(f"not a samdeploy model package (no {MANIFEST}): {root}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PackageError(f"corrupt {manifest_path}: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise PackageError(f"not a samdeploy model package ({manifest_path} has no format '{FORMAT}')")
        missing = [key for key in _REQUIRED_KEYS if key not in manifest]
        if missing:
            raise PackageError(f"incomplete {manifest_path}: missing {', '.join(missing)}")
        version = manifest["format_version"]
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise PackageError(
                f"{manifest_path} has format version {version}; this samdeploy reads up to {FORMAT_VERSION}:"
                " upgrade samdeploy"
            )
        package = cls(root=root, manifest=manifest)
        for role in (ENCODER, DECODER):
            entry = manifest["models"].get(role)
            if entry is None:
                raise PackageError(f"incomplete {manifest_path}: no '{role}' model")
        for name in manifest["files"]:
            if not (root / name).is_file():
                raise PackageError(f"model package {root} is missing {name}")
        if verify:
            package.verify()
        return package

    def verify(self) -> dict[str, str]:
        """Recompute each file's sha256; raise :class:`PackageError` on the first mismatch.

        Returns ``{file name: sha256}`` of the verified files.
        """
        verified = {}
        for name, info in self.manifest["files"].items():
            path = self.root / name
            if not path.is_file():
                raise PackageError(f"model package {self.root} is missing {name}")
            if path.stat().st_size != info["bytes"]:
                raise PackageError(f"{path} has {path.stat().st_size} bytes, manifest says {info['bytes']}")
            digest = sha256_file(path)
            if digest != info["sha256"]:
                raise PackageError(f"checksum mismatch for {path}: the file is corrupt or was modified")
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
        """Absolute path of the ONNX file of a model role (see :meth:`model`)."""
        return (self.root / self.manifest["models"][role]["file"]).resolve()

    @property
    def prompt_decoder(self) -> str:
        """The role the runtime prompts with: the low-res companion decoder when the package has it."""
        return LOW_RES_DECODER if LOW_RES_DECODER in self.manifest["models"] else DECODER

    @property
    def prompt_decoder_inputs(self) -> tuple[str, ...]:
        """Input names of :attr:`prompt_decoder`, in the official order."""
        return LOW_RES_DECODER_INPUTS if self.prompt_decoder == LOW_RES_DECODER else DECODER_INPUTS

    @property
    def encoder_path(self) -> Path:
        return self.model_path(ENCODER)

    @property
    def decoder_path(self) -> Path:
        return self.model_path(DECODER)

    @property
    def model_type(self) -> str:
        return self.manifest["model_type"]

    @property
    def family(self) -> str:
        """``sam`` (SAM 1; packages without the field are SAM 1), ``sam2.1`` or ``sam2``."""
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
        return dict(self.manifest.get("runtime", {}).get(role, {}))

    @property
    def export_report(self) -> dict[str, Any]:
        return self.manifest.get("export", {})
