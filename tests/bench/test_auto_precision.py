"""``--precision auto``: the CPU read from /proc/cpuinfo, the precision chosen from its flags, and
the choice recorded in the package (samdeploy.cpu, optimize_package, the export and inspect CLI)."""

from __future__ import annotations

import sys

import pytest

from samdeploy import cpu
from samdeploy.cli import main
from samdeploy.engine.backends import OpenVinoBackend, available_backends
from samdeploy.package import ModelPackage

ZEN3_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni vaes"
ZEN4_FLAGS = (
    "fpu sse2 fma avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vnni"
    " avx512_bitalg"
)
SPR_FLAGS = "sse2 fma avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8"
ICELAKE_FLAGS = "sse2 fma avx2 avx512f avx512_vnni"
ALDERLAKE_FLAGS = "sse2 fma avx2 avx_vnni"
GRAVITON2_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
)


def x86_cpuinfo(vendor: str, family: int, model: int, name: str, flags: str, processors: int = 2) -> str:
    block = (
        f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        f"model name\t: {name}\nstepping\t: 1\nflags\t\t: {flags}\n\n"
    )
    return "".join(block.format(n=n) for n in range(processors))


def arm_cpuinfo(part: str, features: str) -> str:
    return (
        f"processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
    )


ZEN3 = x86_cpuinfo("AuthenticAMD", 25, 1, "AMD EPYC 7B13", ZEN3_FLAGS)
ZEN4 = x86_cpuinfo("AuthenticAMD", 25, 17, "AMD EPYC", ZEN4_FLAGS)


# choose_precision encodes docs/performance.md: each row is a CPU class measured (or reasoned) there.
@pytest.mark.parametrize(
    ("flags", "openvino", "precision", "reason_has"),
    [
        (ZEN4_FLAGS, True, "int8-bf16", "avx512_bf16"),  # Zen 4: int8-bf16 1.72x int8
        (ZEN4_FLAGS, False, "int8", "OpenVINO cannot run bf16"),  # no OpenVINO: int8, saying what it misses
        # AMX: OpenVINO's bf16 products on AMX tiles beat its int8 layers (xeon-amx, 2026-12-06)
        (SPR_FLAGS, True, "bf16", "AMX (amx_bf16)"),
        ("sse2 avx2 amx_tile amx_bf16", True, "bf16", "amx_bf16"),
        (SPR_FLAGS, False, "int8", "OpenVINO cannot run bf16"),  # ONNX Runtime's int8 runs on AMX-INT8
        (ZEN3_FLAGS, True, "int8", "AVX2 without VNNI"),  # Zen 3: OpenVINO present but no bf16
        (ZEN3_FLAGS, False, "int8", "7-bit weights"),
        (ICELAKE_FLAGS, True, "int8", "avx512_vnni"),  # VNNI without bf16: bf16 emulated
        (ALDERLAKE_FLAGS, True, "int8", "avx_vnni"),
        (GRAVITON2_FEATURES, False, "int8", "asimddp"),
        ("", True, "int8", "no CPU features known"),  # macOS, Windows: nothing read
    ],
)
def test_choose_precision(flags, openvino, precision, reason_has) -> None:
    choice = cpu.choose_precision(flags.split(), openvino)
    assert choice == (precision, choice.reason)  # a (precision, reason) pair
    assert reason_has in choice.reason


def test_no_bf16_package_without_native_bf16() -> None:
    # bf16 and int8-bf16 are emulated (slower than fp32) without AVX512-BF16/AMX: never chosen there,
    # whatever other flags are set.
    for flags in (ZEN3_FLAGS, ICELAKE_FLAGS, ALDERLAKE_FLAGS, "avx512f avx512_vnni amx_int8 amx_tile", ""):
        assert cpu.choose_precision(flags.split(), openvino_available=True).precision == "int8"


@pytest.mark.parametrize(
    ("text", "kind", "family", "model", "flags"),
    [
        (ZEN3, "zen3", 25, 1, ["avx2", "fma"]),
        (ZEN4, "zen4", 25, 17, ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]),
        (x86_cpuinfo("AuthenticAMD", 25, 0x61, "AMD Ryzen 9 7950X", ZEN4_FLAGS), "zen4", 25, 0x61, None),
        (x86_cpuinfo("AuthenticAMD", 25, 0x21, "AMD Ryzen 9 5950X", ZEN3_FLAGS), "zen3", 25, 0x21, None),
        (x86_cpuinfo("AuthenticAMD", 26, 2, "AMD EPYC 9B45", ZEN4_FLAGS), "zen5", 26, 2, None),
        (x86_cpuinfo("AuthenticAMD", 23, 0x31, "AMD EPYC 7R32", ZEN3_FLAGS), "zen2", 23, 0x31, None),
        (x86_cpuinfo("GenuineIntel", 6, 143, "Intel(R) Xeon(R) Platinum 8488C", SPR_FLAGS), "sapphirerapids", 6, 143, None),
        (x86_cpuinfo("GenuineIntel", 6, 167, "Intel(R) Xeon(R) Processor", SPR_FLAGS), "xeon-amx", 6, 167, None),
        (x86_cpuinfo("GenuineIntel", 6, 167, "Intel(R) Xeon(R) Processor", SPR_FLAGS + " amx_fp16"), "xeon-amx-fp16", 6,
         167, None),
        (x86_cpuinfo("GenuineIntel", 6, 85, "Intel(R) Xeon(R) 8275CL", ICELAKE_FLAGS), "cascadelake", 6, 85, None),
        (x86_cpuinfo("GenuineIntel", 6, 151, "12th Gen Intel(R) Core(TM) i7-12700", ALDERLAKE_FLAGS),
         "12th-gen-intel-r-core-tm-i7-12700", 6, 151, ["avx2", "fma", "avx_vnni"]),
        (arm_cpuinfo("0xd0c", GRAVITON2_FEATURES), "neoverse-n1", None, 0xD0C, ["asimddp"]),
    ],
)  # fmt: skip
def test_cpu_info_reads_a_cpuinfo_file(tmp_path, text, kind, family, model, flags) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    info = cpu.cpu_info(path)
    assert (info.kind, info.family, info.model) == (kind, family, model)
    if flags is not None:
        assert info.relevant_flags == flags
    assert cpu.cpu_flags(path) == info.flags


def test_cpu_info_without_a_cpuinfo_file(tmp_path) -> None:
    # Other operating systems have no /proc/cpuinfo: no flags, a name from platform, no error.
    info = cpu.cpu_info(tmp_path / "missing")
    assert info.flags == frozenset() and info.family is None and info.model is None
    assert info.model_name and info.kind
    assert cpu.choose_precision(info.flags, True).precision == "int8"


def test_auto_asks_openvino_only_where_the_cpu_has_bf16(tmp_path, monkeypatch) -> None:
    # OpenVINO is imported (and its device queried) only when the flags say bf16: on Zen 3 it is not.
    def fail() -> bool:
        raise AssertionError("OpenVINO asked on a CPU without bf16")

    (tmp_path / "zen3").write_text(ZEN3)
    (tmp_path / "zen4").write_text(ZEN4)
    monkeypatch.setattr(cpu, "openvino_runs_bf16", fail)
    zen3 = cpu.auto_precision(tmp_path / "zen3")
    assert (zen3.precision, zen3.openvino_bf16) == ("int8", False)
    monkeypatch.setattr(cpu, "openvino_runs_bf16", lambda: False)
    assert cpu.auto_precision(tmp_path / "zen4").precision == "int8"
    monkeypatch.setattr(cpu, "openvino_runs_bf16", lambda: True)
    zen4 = cpu.auto_precision(tmp_path / "zen4")
    assert zen4.to_json() == {
        "chosen": "int8-bf16",
        "reason": zen4.reason,
        "cpu": {
            "model_name": "AMD EPYC",
            "vendor": "AuthenticAMD",
            "family": 25,
            "model": 17,
            "kind": "zen4",
            "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"],
        },
        "openvino_bf16": True,
    }


def _bf16_package() -> str:
    """The package ``auto`` makes on this machine when OpenVINO runs bf16 here: bf16 with AMX, else
    int8-bf16 (docs/performance.md, "Which CPUs the fast path suits")."""
    return "bf16" if "amx_bf16" in cpu.cpu_flags() else "int8-bf16"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_auto_on_this_machine_agrees_with_openvino() -> None:
    # /proc/cpuinfo's flags and OpenVINO's own device capabilities must tell the same story here.
    has_bf16 = "openvino" in available_backends() and OpenVinoBackend.supports_precision("bf16")
    choice = cpu.auto_precision()
    assert choice.precision == (_bf16_package() if has_bf16 else "int8")
    assert choice.cpu.flags == cpu.cpu_flags()


def test_export_precision_auto_records_the_choice(tiny_checkpoint, tmp_path, monkeypatch, capsys) -> None:
    # On a (fake) Zen 3 the choice is int8: the tiny random model passes the bar at int8, whereas at
    # bf16 its near-zero logits flip (see test_bf16.py), so this runs on every machine.
    (tmp_path / "cpuinfo").write_text(ZEN3)
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "cpuinfo")
    out = tmp_path / "auto"
    code = main(["export", str(tiny_checkpoint), "-o", str(out), "--precision", "auto", "--simplify", "none"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    package = ModelPackage.load(out, verify=True)
    assert package.precision == "int8"
    record = package.manifest["export"]["precision"]
    assert record["precision"] == "int8" and record["passed"] is True
    assert record["auto"]["chosen"] == "int8" and "AVX2 without VNNI" in record["auto"]["reason"]
    assert record["auto"]["cpu"] == {
        "model_name": "AMD EPYC 7B13",
        "vendor": "AuthenticAMD",
        "family": 25,
        "model": 1,
        "kind": "zen3",
        "flags": ["avx2", "fma"],
    }
    line = "precision auto chose int8 on zen3 (AMD EPYC 7B13, family 25 model 1; flags avx2, fma): AVX2"
    assert line in stdout
    assert "precision auto: int8 (AVX2" in stderr  # progress, before the package is made
    code = main(["inspect", str(out)])
    assert code == 0
    assert line in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto", "cpuinfo"]  # no scratch export left


@pytest.mark.skipif(
    not ("openvino" in available_backends() and OpenVinoBackend.supports_precision("bf16")),
    reason="needs OpenVINO and a CPU with native bf16 (AVX512-BF16 or AMX)",
)
def test_auto_makes_a_bf16_package_where_the_cpu_has_bf16(tmp_path) -> None:
    # Nothing faked: this machine's cpuinfo and OpenVINO lead to the int8-bf16 package (bf16 with AMX),
    # recorded as such. The trained default model: random weights flip near-zero logits at bf16 (see
    # test_bf16.py).
    from samdeploy.export.precision import optimize_package
    from samdeploy.sam.model import DEFAULT_MODEL

    expected = _bf16_package()
    report = optimize_package(DEFAULT_MODEL, tmp_path / "auto", "auto", measure_runs=0, check_images=1)
    assert report.precision == expected and report.passed
    package = ModelPackage.load(tmp_path / "auto", verify=True)
    assert package.precision == expected and package.runtime("image_encoder")["backend"] == "openvino"
    auto = package.manifest["export"]["precision"]["auto"]
    assert auto["chosen"] == expected and auto["openvino_bf16"] is True
    assert auto["cpu"] == cpu.cpu_info().to_json()
    assert set(auto["cpu"]["flags"]) & set(cpu.BF16_FLAGS)
