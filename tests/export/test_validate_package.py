"""``validate_package`` on the tiny package itself: the report an export records and the inputs it compares.

The gate tests (``test_gate.py``) check that a broken package is refused through a whole export; these
call ``validate_package`` directly on the tiny package the session fixtures already exported, so a slip
in the report (a figure under the wrong key, a figure left out of ``worst`` and so never held to its
tolerance, the low-res decoder skipped, the mask-input case fed no mask) shows within seconds. The full
report is made on three of the prompt kinds (the whole set runs in ``test_gate.py``); the tests that
only need one case narrow the pictures and prompts further.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import samdeploy.export.validate as validate
from samdeploy.export.validate import (
    TOLERANCES,
    VALIDATION_IMAGE_SIZE,
    _prompts,
    _session,
    encoder_images,
    failures,
    non_finite,
    validate_package,
)

# The cases of the full report, in validation order (the mask-input case chains the point case).
PROMPT_NAMES = ["point", "box", "mask_input"]
PICTURES = encoder_images()
DECODER_FIGURES = {
    "masks_max_abs",
    "masks_max_rel",
    "mask_agreement",
    "iou_predictions_max_abs",
    "low_res_cosine",
}
LOW_RES_FIGURES = {"low_res_max_rel", "low_res_iou_max_abs"}


def _files(package, low_res: bool = True) -> list:
    names = ["image_encoder.onnx", "mask_decoder.onnx"] + (["mask_decoder_low_res.onnx"] if low_res else [])
    return [package / name for name in names]


def _only(monkeypatch, prompts, pictures=("synthetic",)) -> None:
    """Narrow validation to some prompts (kept in validation order) and pictures."""
    chosen = [prompt for prompt in _prompts(*VALIDATION_IMAGE_SIZE) if prompt.name in prompts]
    monkeypatch.setattr(validate, "_prompts", lambda height, width: chosen)
    monkeypatch.setattr(validate, "encoder_images", lambda: {name: PICTURES[name] for name in pictures})


def _check_names(report) -> None:
    """``model.json`` records these keys; the docs and the verdict read them by name."""
    assert set(report) == {
        "image",
        "encoder_inputs",
        "embeddings",
        "decoder",
        "end_to_end",
        "worst",
        "tolerances",
    }
    assert report["image"] == {"kind": "synthetic", "height": 480, "width": 640}
    assert list(report["encoder_inputs"]) == list(PICTURES)
    for name, case in report["encoder_inputs"].items():
        height, width = PICTURES[name].shape[:2]
        assert case.keys() == {"max_abs", "max_rel", "cosine", "height", "width"}
        assert (case["height"], case["width"]) == (height, width), name
    assert list(report["decoder"]) == PROMPT_NAMES
    assert list(report["end_to_end"]) == PROMPT_NAMES
    for name in PROMPT_NAMES:
        assert report["decoder"][name].keys() == DECODER_FIGURES | LOW_RES_FIGURES, name
        assert report["end_to_end"][name].keys() == {"mask_agreement", "iou_predictions_max_abs"}, name
    assert report["tolerances"] == TOLERANCES


def _check_worst(report) -> None:
    """Each tolerance is held to the worst figure of all cases: a figure missing from ``worst`` is
    skipped by ``failures``, and one taken from a single case lets the others through."""
    pictures = report["encoder_inputs"].values()
    assert report["embeddings"] == {
        "max_abs": max(case["max_abs"] for case in pictures),
        "max_rel": max(case["max_rel"] for case in pictures),
        "cosine": min(case["cosine"] for case in pictures),
    }
    cases = report["decoder"].values()
    assert report["worst"] == {
        "embeddings_rel": report["embeddings"]["max_rel"],
        "embeddings_cosine": report["embeddings"]["cosine"],
        "mask_logits_rel": max(case["masks_max_rel"] for case in cases),
        "iou_predictions_abs": max(
            max(case["iou_predictions_max_abs"], case["low_res_iou_max_abs"]) for case in cases
        ),
        "mask_agreement": min(case["mask_agreement"] for case in cases),
        "end_to_end_mask_agreement": min(case["mask_agreement"] for case in report["end_to_end"].values()),
        "low_res_logits_rel": max(case["low_res_max_rel"] for case in cases),
    }
    assert report["worst"].keys() == TOLERANCES.keys()


def _check_masks_fed(fed) -> None:
    """Only ``mask_input`` feeds a mask, to the PyTorch-embedding and the end-to-end run alike; a
    case fed none would leave the decoder's mask path unvalidated."""
    assert list(fed) == PROMPT_NAMES
    for name, masks in fed.items():
        assert len(masks) == 2, name
        if name == "mask_input":
            grid = 4 * 16  # the tiny model's 16x16 embedding grid, upscaled 4x
            assert all(mask is not None and mask.shape == (1, 1, grid, grid) for mask in masks)
            assert masks[0] is masks[1]
        else:
            assert masks == [None, None], name


def test_the_report_of_the_package_as_exported(tiny_sam, tiny_package, tiny_sam_config, monkeypatch):
    """The package exported from the same checkpoint, validated as the export does (low-res decoder,
    the manifest's constants; every picture, three prompt kinds), passes with every figure finite (a
    NaN would be refused), under the names ``model.json`` records, with ``worst`` over every case,
    and with a mask fed where the case says so. One test, one validation: the checks share it."""
    fed: dict[str, list] = {}
    real = validate.decoder_feeds

    def spy(sam, prompt, embeddings, mask_input):
        fed.setdefault(prompt.name, []).append(mask_input)
        return real(sam, prompt, embeddings, mask_input)

    _only(monkeypatch, PROMPT_NAMES, pictures=list(PICTURES))
    monkeypatch.setattr(validate, "decoder_feeds", spy)
    report = validate_package(
        tiny_sam,
        *_files(tiny_package),
        pixel_mean=tiny_sam_config.pixel_mean,
        pixel_std=tiny_sam_config.pixel_std,
    )
    assert failures(report) == []
    assert non_finite(report) == []
    _check_names(report)
    _check_worst(report)
    _check_masks_fed(fed)


def test_the_mask_input_is_the_point_case_best_multimask_output(tiny_sam, tiny_package, monkeypatch):
    """As an interactive tool chains clicks: the best of the point case's three multimask outputs
    (index 0, the single-mask output, left out) by predicted IoU. The IoU is set here so that each
    of the three has a different rank, and index 0 is the highest."""
    _only(monkeypatch, prompts=("point", "mask_input"))
    real = validate.torch_decoder
    seen: dict[str, tuple] = {}

    def reference(sam, prompt, embeddings, mask_input):
        masks, iou, low_res = real(sam, prompt, embeddings, mask_input)
        if prompt.name == "point":
            iou = np.array([[0.9, 0.1, 0.3, 0.2]], np.float32)
        seen[prompt.name] = (mask_input, low_res)
        return [masks, iou, low_res]

    monkeypatch.setattr(validate, "torch_decoder", reference)
    validate_package(tiny_sam, *_files(tiny_package, low_res=False))
    assert seen["point"][0] is None
    np.testing.assert_array_equal(seen["mask_input"][0], seen["point"][1][:, 2:3])


def test_without_the_low_res_decoder_its_figures_are_left_out(tiny_sam, tiny_package, monkeypatch):
    """A package without a low-res decoder still validates; its figures are absent, not zero or NaN,
    and the IoU limit holds the full decoder's figure alone. Without the manifest's constants the
    ONNX encoder gets PyTorch's own input."""
    _only(monkeypatch, prompts=("point",))
    report = validate_package(tiny_sam, *_files(tiny_package, low_res=False))
    case = report["decoder"]["point"]
    assert case.keys() == DECODER_FIGURES
    assert "low_res_logits_rel" not in report["worst"]
    assert report["worst"]["iou_predictions_abs"] == case["iou_predictions_max_abs"]
    assert report["worst"].keys() == TOLERANCES.keys() - {"low_res_logits_rel"}
    assert failures(report) == []


class _OffIoU:
    """An ONNX session whose ``iou_predictions`` output is ``offset`` off; the other outputs as they are."""

    def __init__(self, session, offset: float) -> None:
        self.session, self.offset = session, offset

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        if "mask_iou_threshold" in feeds:  # the graph's filter judges the IoUs this session reports
            feeds = {**feeds, "mask_iou_threshold": feeds["mask_iou_threshold"] - np.float32(self.offset)}
        outputs = self.session.run(names, feeds)
        order = names if names is not None else [output.name for output in self.session.get_outputs()]
        return [
            value + self.offset if name == "iou_predictions" else value
            for name, value in zip(order, outputs, strict=True)
        ]


@pytest.mark.parametrize("broken", ["mask_decoder.onnx", "mask_decoder_low_res.onnx"])
def test_either_decoder_iou_head_is_held_to_the_limit(tiny_sam, tiny_package, monkeypatch, broken):
    """The runtime uses the low-res decoder for interactive prompts: its IoU predictions count for the
    IoU limit as much as the full decoder's, so a low-res graph with a wrong IoU head fails alone."""
    _only(monkeypatch, prompts=("point",))
    real = validate._session
    monkeypatch.setattr(
        validate, "_session", lambda path: _OffIoU(real(path), 0.01) if path.name == broken else real(path)
    )
    report = validate_package(tiny_sam, *_files(tiny_package))
    assert [problem.split()[0] for problem in failures(report)] == ["iou_predictions_abs"]


@pytest.mark.parametrize("swap", ["mean", "std"])
def test_the_manifest_constants_are_what_the_onnx_encoder_gets(tiny_sam, tiny_package, tiny_sam_config, swap):
    """The runtime normalizes with the manifest's ``pixel_mean``/``pixel_std``: one in BGR order
    (PyTorch keeps its own) must fail the embedding figures."""
    mean, std = tiny_sam_config.pixel_mean, tiny_sam_config.pixel_std
    mean, std = (mean[::-1], std) if swap == "mean" else (mean, std[::-1])
    with pytest.MonkeyPatch.context() as patch:
        _only(patch, prompts=("point",))
        report = validate_package(tiny_sam, *_files(tiny_package), pixel_mean=mean, pixel_std=std)
    assert report["worst"]["embeddings_rel"] > TOLERANCES["embeddings_rel"]
    assert "embeddings_rel" in {problem.split()[0] for problem in failures(report)}
    assert math.isfinite(report["worst"]["embeddings_rel"])


def test_sessions_run_on_the_cpu_without_a_memory_arena(tiny_package, capfd):
    """Validation runs on the CPU provider (the reference is PyTorch on the CPU) and gives activation
    memory back after each run: with the arena a vit_h validation keeps GBs of global attention.
    Log level 3 keeps ONNX Runtime's warnings out of the export's output and its errors in it. A
    provider name ONNX Runtime does not know would still end on the CPU, through a fallback that
    prints an "EP Error" banner into every export's output: opening a session prints nothing."""
    session = _session(tiny_package / "image_encoder.onnx")
    assert session.get_providers() == ["CPUExecutionProvider"]
    options = session.get_session_options()
    assert options.enable_cpu_mem_arena is False
    assert options.log_severity_level == 3
    assert capfd.readouterr() == ("", "")


PREPARED = ("mask_decoder_image.onnx", "mask_decoder_prepared.onnx")


class _Shifted:
    """An ONNX session whose output ``name`` comes out ``offset`` off."""

    def __init__(self, session, name: str, offset: float) -> None:
        self.session, self.name, self.offset = session, name, offset

    def get_inputs(self):
        return self.session.get_inputs()

    def run(self, names, feeds):
        outputs = self.session.run(names, feeds)
        return [
            value + self.offset if name == self.name else value
            for name, value in zip(names, outputs, strict=True)
        ]


def test_the_prepared_pair_is_checked_on_the_prompts_without_a_mask(tiny_sam, tiny_package, monkeypatch):
    """Why: every click without a mask_input runs the image side and the prepared decoder. Their
    figures must be in the report for those prompts (not for the mask-input case, which they never
    answer) and count in ``worst``, or a wrong pair would pass the export."""
    _only(monkeypatch, prompts=("point", "mask_input"))
    prepared = tuple(tiny_package / name for name in PREPARED)
    report = validate_package(tiny_sam, *_files(tiny_package), prepared)
    point, mask_case = report["decoder"]["point"], report["decoder"]["mask_input"]
    assert point.keys() == DECODER_FIGURES | LOW_RES_FIGURES | {"prepared_max_rel", "prepared_iou_max_abs"}
    assert mask_case.keys() == DECODER_FIGURES | LOW_RES_FIGURES
    assert 0.0 < point["prepared_max_rel"] <= 1e-4 and point["prepared_iou_max_abs"] <= 1e-5
    assert failures(report) == []


@pytest.mark.parametrize(
    ("broken", "output", "figures"),
    [
        ("mask_decoder_prepared.onnx", "iou_predictions", {"iou_predictions_abs"}),
        # the values feed the tokens, so the IoU head reads them too
        ("mask_decoder_image.onnx", "image_values", {"low_res_logits_rel", "iou_predictions_abs"}),
    ],
    ids=["prepared-iou-head", "image-side-values"],
)
def test_a_wrong_prepared_pair_fails_alone(tiny_sam, tiny_package, monkeypatch, broken, output, figures):
    """Either half of the pair off (the prepared decoder's IoU head, or the image side's values that
    the first layer's prompt tokens read) fails its figure while the other decoders pass."""
    _only(monkeypatch, prompts=("point",))
    real = validate._session
    monkeypatch.setattr(
        validate,
        "_session",
        lambda path: _Shifted(real(path), output, 0.5) if path.name == broken else real(path),
    )
    report = validate_package(
        tiny_sam, *_files(tiny_package), tuple(tiny_package / name for name in PREPARED)
    )
    assert {problem.split()[0] for problem in failures(report)} == figures
    case = report["decoder"]["point"]
    assert (
        case["low_res_max_rel"] <= 1e-3 and case["low_res_iou_max_abs"] <= 1e-3
    )  # the low-res decoder itself is fine
