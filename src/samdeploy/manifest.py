"""The schema of ``model.json``, checked with pydantic before a runtime trusts any field.

A package can come from anyone, so every field the runtime reads is typed and bounded here:
strict types (``"5051379"`` is not a byte count, ``true`` is not a version), finite numbers, a
positive ``pixel_std``, file names that stay inside the package folder, and every model file
listed in ``files`` with its sha256. Fields the runtime does not read (``architecture``,
``export``) may hold anything JSON holds; unknown top-level keys are allowed, so a later writer
can add information without breaking this reader (``format_version`` marks breaking changes).

:func:`validate_manifest` raises :class:`~samdeploy.errors.PackageError` with a one-line message
that names the field, e.g. ``models.image_encoder.file: field required``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from samdeploy import limits
from samdeploy.errors import PackageError

FORMAT = "samdeploy-model"
FORMAT_VERSION = 1
#: The model family this runtime runs; a package of another (well-formed) family loads as a
#: ModelPackage (``inspect`` shows it) but :func:`samdeploy.load_model` refuses it.
FAMILY = "sam"
#: SAM 2.x families, run by :mod:`samdeploy.sam2` (``load_model`` picks the runtime by family).
SAM2_FAMILIES = ("sam2.1", "sam2")
ENCODER = "image_encoder"
DECODER = "mask_decoder"
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FAMILY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


def _relative_file(name: str) -> str:
    """A file name of the package: a relative path with no ``..``, ``.`` or empty part."""
    if not name or len(name) > 255 or "\\" in name or "\x00" in name:
        raise ValueError(
            "must be a relative file name inside the package (no backslash, at most 255 characters)"
        )
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"{name!r} is an absolute path; a package names only files inside its folder")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"{name!r} leaves the package folder or has an empty part ('..', '.', '//')")
    return name


def _pattern(regex: re.Pattern[str], what: str):
    def check(value: str) -> str:
        if not regex.match(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return AfterValidator(check)


FileName = Annotated[str, AfterValidator(_relative_file)]
Name = Annotated[str, _pattern(_NAME, "name (letters, digits, '.', '_', '-')")]
PositiveInt = Annotated[int, Field(gt=0)]
Dim = Annotated[int, Field(ge=0)]
FiniteFloat = Annotated[float, Field(ge=-1e6, le=1e6)]
# Pixels are divided by the std: zero gives NaN masks, a tiny value overflows float32.
PixelStd = Annotated[float, Field(ge=1e-6, le=1e6)]
Scalar = Annotated[int | float | str | bool, Field()]


class _Strict(BaseModel):
    """No coercion (a string is not a number, a bool is not an int), no NaN or infinity."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow", frozen=True)


class TensorSchema(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    shape: Annotated[list[Dim | Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=8)]
    dtype: Literal[DTYPES]  # type: ignore[valid-type]


class MaskTokens(_Strict):
    single: Dim
    multimask: Annotated[list[Dim], Field(max_length=16)]


class ModelSchema(_Strict):
    file: FileName
    inputs: Annotated[list[TensorSchema], Field(min_length=1, max_length=64)]
    outputs: Annotated[list[TensorSchema], Field(min_length=1, max_length=64)]
    mask_tokens: MaskTokens | None = None


class FileSchema(_Strict):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0, le=2**48)]


class RuntimeRequest(_Strict):
    """How a model asks to run; keys besides these two are backend options (scalars)."""

    __pydantic_extra__: dict[str, Scalar]

    backend: Name
    precision: Name | None = None


class Preprocessing(_Strict):
    """What the runtime does before the encoder: only what this runtime implements is accepted."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    resize: Literal["longest_side"] = "longest_side"
    normalize: Literal["runtime"] = "runtime"
    pad: Literal["runtime"] = "runtime"
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"
    pad_position: Literal["bottom_right"] = "bottom_right"


class Sam2Preprocessing(_Strict):
    """SAM 2.x pre-processing (a square resize, no padding): only what samdeploy.sam2 implements."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    resize: Literal["square"] = "square"
    interpolation: Literal["bilinear_antialias"] = "bilinear_antialias"
    scale: Literal["divide_by_255_before_resize"] = "divide_by_255_before_resize"
    normalize: Literal["runtime"] = "runtime"
    pad: Literal["none"] = "none"
    channel_order: Literal["RGB"] = "RGB"
    layout: Literal["NCHW"] = "NCHW"


def _preprocessing_kind(value: Any) -> str:
    """SAM 2's pre-processing resizes to a square; any other is checked as SAM's (so an error
    names SAM's fields, not both alternatives')."""
    resize = value.get("resize") if isinstance(value, dict) else getattr(value, "resize", None)
    return "union-sam2" if resize == "square" else "union-sam"


# The tags start with "union" so that error locations skip them (see _where).
AnyPreprocessing = Annotated[
    Annotated[Preprocessing, Tag("union-sam")] | Annotated[Sam2Preprocessing, Tag("union-sam2")],
    Discriminator(_preprocessing_kind),
]

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class GeneratorSettings(_Strict):
    """Recommended ``SamAutomaticMaskGenerator`` settings for this model (all optional)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)

    points_per_side: Annotated[int, Field(ge=1, le=limits.MAX_POINTS_PER_SIDE.value)] | None = None
    points_per_batch: Annotated[int, Field(ge=1, le=limits.MAX_POINTS_PER_BATCH.value)] | None = None
    pred_iou_thresh: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    stability_score_thresh: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    stability_score_offset: Annotated[float, Field(gt=0.0, le=1e3)] | None = None
    box_nms_thresh: Unit | None = None
    crop_n_layers: Annotated[int, Field(ge=0, le=limits.MAX_CROP_LAYERS.value)] | None = None
    crop_nms_thresh: Unit | None = None
    crop_overlap_ratio: Unit | None = None
    crop_n_points_downscale_factor: Annotated[int, Field(ge=1, le=1024)] | None = None
    min_mask_region_area: Annotated[int, Field(ge=0)] | None = None


class ManifestSchema(_Strict):
    format: Literal[FORMAT]  # type: ignore[valid-type]
    format_version: Annotated[int, Field(ge=1, le=FORMAT_VERSION)]
    family: Annotated[str, _pattern(_FAMILY, "model family")] = FAMILY
    model_type: Name
    architecture: dict[str, Any] | None = None
    image_size: Annotated[int, Field(gt=0, le=limits.MAX_IMAGE_SIZE.value)]
    embedding_size: tuple[PositiveInt, PositiveInt] | None = None
    mask_input_size: tuple[PositiveInt, PositiveInt] | None = None
    pixel_mean: tuple[FiniteFloat, FiniteFloat, FiniteFloat]
    pixel_std: tuple[PixelStd, PixelStd, PixelStd]
    preprocessing: AnyPreprocessing | None = None
    precision: Name = "fp32"
    opset: Annotated[int, Field(ge=1, le=1000)] | None = None
    models: Annotated[dict[Name, ModelSchema], Field(min_length=1, max_length=16)]
    runtime: dict[Name, RuntimeRequest] | None = None
    files: Annotated[dict[FileName, FileSchema], Field(min_length=1, max_length=64)]
    generator: GeneratorSettings | None = None
    export: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ManifestSchema:
        if self.family == FAMILY or self.family in SAM2_FAMILIES:
            for role in (ENCODER, DECODER):
                if role not in self.models:
                    raise ValueError(f"models: no '{role}' model")
            # Each family runs only its own pre-processing (SAM pads, SAM 2 resizes to a square).
            wanted = Sam2Preprocessing if self.family in SAM2_FAMILIES else Preprocessing
            if self.preprocessing is not None and not isinstance(self.preprocessing, wanted):
                raise ValueError(f"preprocessing: not the pre-processing of a '{self.family}' package")
        for role, entry in self.models.items():
            if entry.file not in self.files:
                raise ValueError(
                    f"models.{role}.file: {entry.file} is not listed in files (each file needs its sha256)"
                )
        for role in self.runtime or {}:
            if role not in self.models:
                raise ValueError(f"runtime.{role}: no model of that name in models")
        return self


_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict", "tuple"}
_TAG_PREFIXES = ("function-", "tagged-union", "union", "nullable", "constrained", "json-or-python")


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ``models.image_encoder.inputs[0].name``."""
    text = ""
    for part in loc:
        if part == "[key]":
            text += " (key)"
        elif isinstance(part, int):
            text += f"[{part}]"
        elif part in _TYPE_TAGS or part.startswith(_TAG_PREFIXES) or "[" in part:
            continue  # the name of a union member or a validator, not a field
        elif re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", part):
            text += f".{part}" if text else part
        else:
            text += f"[{part!r}]"
    return text


def _message(error: dict[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    where = _where(tuple(error["loc"]))
    return f"{where}: {message}" if where else message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str | bytes, source: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity; raises :class:`PackageError`."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise PackageError(f"corrupt {source}: {exc}") from None


def validate_manifest(manifest: str | bytes | dict[str, Any], source: str) -> ManifestSchema:
    """Check ``model.json`` (its text, or the parsed dict) against the schema; ``source`` names it
    in messages. Validated as JSON: strict JSON types, arrays for the fixed-length lists.

    Raises :class:`PackageError` naming the first bad field (and how many more there are).
    """
    if isinstance(manifest, dict):
        try:
            manifest = json.dumps(manifest, allow_nan=False)
        except ValueError:
            raise PackageError(f"invalid {source}: a number is NaN or infinite") from None
    else:
        parse_json(manifest, source)  # refuses NaN and Infinity, which pydantic's parser lets by
    try:
        return ManifestSchema.model_validate_json(manifest)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A union reports one error per alternative; the first says enough.
        first = _message(errors[0])
        more = len({tuple(e["loc"][:2]) for e in errors}) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else ""
        raise PackageError(f"invalid {source}: {first}{tail}") from None
