"""What the CPU this runs on can do, and which package precision suits it.

    /proc/cpuinfo --cpu_info()--> CpuInfo (name, family/model, kind, flags)
                                      |
    OpenVINO runs bf16 here? ---------+--choose_precision(flags, openvino)--> Choice(precision, reason)

:func:`choose_precision` is pure: it encodes what docs/performance.md measured, so it is tested on
flag sets of CPUs this machine is not. :func:`auto_precision` feeds it this machine's facts; it is
what ``samdeploy export --precision auto`` and ``optimize_package(..., precision="auto")`` run.

The figures in the reasons are vit_b encoder times from docs/performance.md (2 threads):

* native bf16 (AVX512-BF16 or AMX) with OpenVINO: ``int8-bf16`` (Zen 4: 2.03 s, against 2.86 s
  for bf16, 3.50 s for int8 and 6.01 s for fp32);
* anything else: ``int8``. With VNNI its int8 products accumulate in int32; with AVX2 alone its
  7-bit weights keep ``vpmaddubsw`` from saturating (Zen 3: 1.43-1.49x the fp32 package, 1.29-1.34x
  fp32-openvino, and faster than OpenVINO running the same int8 weights, which has no int8 kernel
  without VNNI). bf16 without hardware support is emulated, slower than fp32, so no bf16 package is
  chosen there.

Nothing here imports torch, onnxruntime or OpenVINO at import time.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

CPUINFO = Path("/proc/cpuinfo")

# The flags (Linux /proc/cpuinfo names) that decide how fast a package runs: x86 SIMD, its int8
# dot products (VNNI), native bf16 (AVX512-BF16, AMX), and ARM's dot products and bf16.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "amx_fp16",
    "asimddp",
    "i8mm",
    "bf16",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

# Intel family 6 server models (the machines a deployment lands on); others get a slug of the name.
_INTEL_FAMILY_6 = {
    0x55: "skylake-sp",  # also Cascade Lake and Cooper Lake: told apart by their flags below
    0x6A: "icelake-sp",
    0x6C: "icelake-sp",
    0x8F: "sapphirerapids",
    0xCF: "emeraldrapids",
    0xAD: "graniterapids",
    0xAE: "graniterapids",
}
# Arm Ltd cores (CPU implementer 0x41) seen in cloud machines: Graviton 2, 3 and 4 among them.
_ARM_PARTS = {0xD0C: "neoverse-n1", 0xD40: "neoverse-v1", 0xD49: "neoverse-n2", 0xD4F: "neoverse-v2"}


class Choice(NamedTuple):
    """A package precision and, in one sentence, why it suits the CPU."""

    precision: str
    reason: str


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as /proc/cpuinfo describes its first processor (fields ``None`` where unknown)."""

    model_name: str
    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def kind(self) -> str:
        """A short name for the micro-architecture (``zen4``), for grouping results by CPU."""
        return cpu_kind(self.vendor, self.family, self.model, self.model_name, self.flags)

    @property
    def relevant_flags(self) -> list[str]:
        """The :data:`RELEVANT_FLAGS` this CPU has, in that order."""
        return [flag for flag in RELEVANT_FLAGS if flag in self.flags]

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "vendor": self.vendor,
            "family": self.family,
            "model": self.model,
            "kind": self.kind,
            "flags": self.relevant_flags,
        }


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def cpu_info(path: Path | None = None) -> CpuInfo:
    """Read the first processor of ``path`` (default :data:`CPUINFO`).

    Where the file is missing or unreadable (macOS, Windows, a sandbox) the result holds what
    :mod:`platform` knows and no flags; it never raises.
    """
    fields: dict[str, str] = {}
    try:
        text = (path or CPUINFO).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = frozenset((fields.get("flags") or fields.get("features") or "").split())
    vendor = fields.get("vendor_id")
    if "cpu implementer" in fields:
        vendor = f"arm-{fields['cpu implementer'].lower()}"
        model = _number(fields.get("cpu part", ""))
        family = None
    else:
        model = _number(fields.get("model", ""))
        family = _number(fields.get("cpu family", ""))
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown"
    return CpuInfo(model_name=name, vendor=vendor, family=family, model=model, flags=flags)


def cpu_flags(path: Path | None = None) -> frozenset[str]:
    """The CPU's feature flags (``avx512_bf16``, ``asimddp``, ...); empty where they cannot be read."""
    return cpu_info(path).flags


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_kind(
    vendor: str | None,
    family: int | None,
    model: int | None,
    model_name: str = "",
    flags: Iterable[str] = (),
) -> str:
    """Micro-architecture of a CPU from its vendor, family and model numbers (as /proc/cpuinfo gives
    them); ``zen3``, ``zen4``, ``sapphirerapids``, ...; otherwise a slug of ``model_name``."""
    flags = set(flags)
    if vendor == "AuthenticAMD" and family is not None and model is not None:
        if family == 0x17:
            return "zen2" if model >= 0x30 else "zen"
        if family == 0x19:
            # Zen 4: Genoa/Bergamo 0x10-0x1f and 0xa0-0xaf, Raphael 0x60-0x6f, Phoenix 0x70-0x7f.
            zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
            return "zen4" if zen4 else "zen3"
        if family == 0x1A:
            return "zen5"
    if vendor == "GenuineIntel" and family == 6 and model in _INTEL_FAMILY_6:
        kind = _INTEL_FAMILY_6[model]
        if kind == "skylake-sp":
            if "avx512_bf16" in flags:
                return "cooperlake"
            if "avx512_vnni" in flags:
                return "cascadelake"
        return kind
    if vendor == "GenuineIntel" and "amx_tile" in flags:
        # Cloud hypervisors may report a made-up model number (a VM with AMX seen as family 6 model
        # 167, "Intel(R) Xeon(R) Processor"); only Xeons have AMX, and AMX-FP16 marks Granite Rapids.
        return "xeon-amx-fp16" if "amx_fp16" in flags else "xeon-amx"
    if vendor == "arm-0x41" and model in _ARM_PARTS:
        return _ARM_PARTS[model]
    return _slug(model_name or "unknown")


def has_native_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with ``flags`` multiplies bf16 natively (AVX512-BF16 or AMX)."""
    return not set(BF16_FLAGS).isdisjoint(flags)


def choose_precision(flags: Iterable[str], openvino_available: bool) -> Choice:
    """The fastest package precision that keeps the accuracy bar on a CPU with ``flags``.

    ``openvino_available``: OpenVINO is installed and runs bf16 on this CPU (the bf16 packages need
    it). Pure: the same flags always give the same choice.
    """
    flags = set(flags)
    bf16 = [flag for flag in BF16_FLAGS if flag in flags]
    vnni = [flag for flag in VNNI_FLAGS if flag in flags]
    if "amx_bf16" in flags and openvino_available:
        return Choice(
            "bf16",
            "AMX (amx_bf16) and OpenVINO: every product in bf16, the linear layers on AMX tiles, where"
            " OpenVINO's int8 layers (inputs quantized per token) are slower; the fastest package measured"
            " there and the most exact fast one (xeon-amx vit_b encoder alone 0.98-1.02 s; int8-bf16 1.25-1.26 s)",
        )
    if bf16 and openvino_available:
        return Choice(
            "int8-bf16",
            f"native bf16 ({', '.join(bf16)}) without AMX, and OpenVINO: linear layers and attention scores in"
            " int8, the rest in bf16, the fastest package measured (Zen 4 vit_b encoder 2.03 s; bf16 2.86 s,"
            " int8 3.50 s)",
        )
    if bf16:
        return Choice(
            "int8",
            f"native bf16 ({', '.join(bf16)}) but OpenVINO cannot run bf16 here (pip install"
            " 'samdeploy[openvino]' for int8-bf16, 1.7x faster than int8 on Zen 4): int8 on ONNX Runtime",
        )
    if vnni:
        return Choice(
            "int8",
            f"int8 dot products ({', '.join(vnni)}) without native bf16: int8 linear layers accumulate in"
            " int32; bf16 would be emulated, slower than fp32",
        )
    if "avx2" in flags:
        return Choice(
            "int8",
            "AVX2 without VNNI or bf16: int8 with 7-bit weights (no saturation in vpmaddubsw) is the one"
            " fast path (Zen 3 vit_b encoder 1.43-1.49x the fp32 package, 1.29-1.34x fp32-openvino)",
        )
    if "asimddp" in flags:
        return Choice(
            "int8",
            "ARM dot products (asimddp): ONNX Runtime's int8 kernels use sdot/udot; not measured here",
        )
    return Choice(
        "int8",
        "no CPU features known that a faster package needs: int8 runs on every CPU and was faster"
        " than fp32 on every one measured",
    )


def openvino_runs_bf16() -> bool:
    """Whether OpenVINO is installed and computes bf16 natively on this CPU (asks it; False on any failure)."""
    from samdeploy.engine.backends import available_backends, backend_class
    from samdeploy.errors import BackendError

    if "openvino" not in available_backends():
        return False
    try:
        return bool(backend_class("openvino").supports_precision("bf16"))
    except BackendError:
        return False


@dataclass(frozen=True)
class AutoChoice:
    """What ``--precision auto`` chose on this machine, and from what."""

    precision: str
    reason: str
    cpu: CpuInfo
    openvino_bf16: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "chosen": self.precision,
            "reason": self.reason,
            "cpu": self.cpu.to_json(),
            "openvino_bf16": self.openvino_bf16,
        }


def auto_precision(path: Path | None = None) -> AutoChoice:
    """:func:`choose_precision` for this machine: its CPU flags, and OpenVINO's answer where they
    say bf16 (OpenVINO is not asked, nor imported, on CPUs without it)."""
    info = cpu_info(path)
    openvino = has_native_bf16(info.flags) and openvino_runs_bf16()
    choice = choose_precision(info.flags, openvino)
    return AutoChoice(choice.precision, choice.reason, info, openvino)
