"""The training loop: official architecture, batched decoding faithful to the official decoder, a run end to end."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from samdeploy.export.config import detect_config
from samdeploy.training.scenes import SceneConfig, generate_scene
from samdeploy.training.train import (
    MODEL_CONFIG,
    StepReport,
    TrainConfig,
    build_model,
    decode,
    embedding_loss,
    prepare_scene,
    sample_prompts,
    train,
)

ROOT = Path(__file__).resolve().parents[2]
# Small scenes and few prompts keep a step well under a second.
TINY = TrainConfig(
    steps=2, images_per_step=2, prompts_per_image=2, warmup_steps=1, scenes=SceneConfig(long_side=(96, 128))
)


def test_model_is_the_official_architecture_and_detectable() -> None:
    model = build_model()
    assert detect_config(model.state_dict()) == MODEL_CONFIG


def test_batched_decode_matches_the_official_decoder() -> None:
    torch.manual_seed(0)
    model = build_model().eval()
    images = torch.randn(2, 3, 256, 256)
    coords = torch.rand(3, 2, 2) * 255
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    with torch.no_grad():
        embeddings = model.image_encoder(images)
        sparse, dense = model.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        rows = torch.tensor([1, 0, 1])
        masks, scores = decode(model, embeddings[rows], sparse, dense)
        for prompt, row in enumerate(rows):
            expected_masks, expected_scores = model.mask_decoder.predict_masks(
                embeddings[row : row + 1],
                model.prompt_encoder.get_dense_pe(),
                sparse[prompt : prompt + 1],
                dense[prompt : prompt + 1],
            )
            torch.testing.assert_close(masks[prompt : prompt + 1], expected_masks, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(scores[prompt : prompt + 1], expected_scores, rtol=1e-4, atol=1e-4)


def test_prompts_land_on_their_objects() -> None:
    model = build_model()
    prepared = [prepare_scene(generate_scene(seed), model, TINY.loss_size) for seed in (0, 1)]
    point, box, points = sample_prompts(
        prepared, replace(TINY, prompts_per_image=8), np.random.default_rng(0), 256
    )
    scale = TINY.loss_size / 256
    for prompts in (point, points):
        positives = prompts.point_coords[prompts.point_labels == 1]
        owners = prompts.targets[:, None].expand(-1, prompts.point_coords.shape[1], -1, -1)[
            prompts.point_labels == 1
        ]
        for (x, y), target in zip(positives, owners, strict=True):
            assert target[int(y * scale), int(x * scale)] > 0
    for (x0, y0, x1, y1), target in zip(box.boxes, box.targets, strict=True):
        assert x0 <= x1 and y0 <= y1
        inside = target[int(y0 * scale) : int(y1 * scale) + 1, int(x0 * scale) : int(x1 * scale) + 1].sum()
        assert inside > 0.5 * target.sum()


def test_embedding_loss_prefers_object_aware_embeddings() -> None:
    labels = torch.tensor([[0, 0, 1, 1], [2, 2, 1, -1], [0, 0, 0, 0], [2, 2, 2, 2]]).reshape(1, 4, 4)
    good = torch.zeros(1, 256, 4, 4)
    for value in range(3):
        good[0, value * 3, labels[0] == value] = 1.0
    good[0, 10, labels[0] == -1] = 1.0
    assert embedding_loss(good, labels) < embedding_loss(torch.ones(1, 256, 4, 4), labels)


@pytest.fixture
def one_torch_thread():
    """Multi-threaded CPU reductions may sum in a different order from run to run (1e-8 apart):
    determinism is a property of one thread per process, which is how training workers run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_torch_thread")
def test_training_is_deterministic() -> None:
    first = train(replace(TINY, steps=1)).state_dict()
    second = train(replace(TINY, steps=1)).state_dict()
    initial = build_model().state_dict()
    assert any(not torch.equal(first[key], initial[key]) for key in first)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


def test_training_script_end_to_end(tmp_path: Path) -> None:
    output = tmp_path / "model.pth"
    log = tmp_path / "log.jsonl"
    command = [
        sys.executable,
        str(ROOT / "tools" / "train_default_model.py"),
        "--output",
        str(output),
        "--steps",
        "2",
        "--images-per-step",
        "1",
        "--prompts-per-image",
        "2",
        "--probe-every",
        "2",
        "--probe-scenes",
        "1",
        "--workers",
        "1",
        "--log",
        str(log),
    ]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    state = torch.load(output, map_location="cpu", weights_only=True)
    assert detect_config(state) == MODEL_CONFIG
    assert all(value.dtype == torch.float16 for value in state.values() if value.is_floating_point())
    assert (tmp_path / "model.partial.pth").is_file()  # written at each probe
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    assert "probe" in lines[-1]

    # --init continues from those weights: one more step moves them, and only a little.
    continued = tmp_path / "continued.pth"
    command[command.index("--output") + 1] = str(continued)
    command[command.index("--steps") + 1] = "1"
    command[command.index("--probe-every") + 1] = "0"
    subprocess.run([*command, "--init", str(output)], check=True, cwd=ROOT, capture_output=True, text=True)
    after = torch.load(continued, map_location="cpu", weights_only=True)
    fresh = build_model().state_dict()
    moved = [key for key in state if not torch.equal(after[key], state[key])]
    assert moved

    def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        return sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a if a[k].is_floating_point())

    # One step from the loaded weights lands nearer to them than the two earlier steps moved from scratch.
    assert distance(after, state) < distance(state, fresh)


@pytest.mark.usefixtures("one_torch_thread")
def test_two_workers_are_deterministic_and_in_step() -> None:
    first = train(replace(TINY, steps=1), workers=2).state_dict()
    second = train(replace(TINY, steps=1), workers=2).state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("workers", [1, 2])
def test_iou_head_stage_trains_only_the_iou_head(workers: int) -> None:
    start = build_model(seed=3)
    initial = {key: value.clone() for key, value in start.state_dict().items()}
    trained = train(replace(TINY, steps=2, trainable="iou-head"), model=start, workers=workers)
    state = trained.state_dict()
    moved = {key for key in state if not torch.equal(state[key], initial[key])}
    assert moved, "the IoU head did not move"
    assert all(key.startswith("mask_decoder.iou_prediction_head.") for key in moved), sorted(moved)
    # The returned model can be trained further: nothing stays frozen.
    assert all(parameter.requires_grad for parameter in trained.parameters())


def test_unknown_trainable_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown trainable 'decoder'"):
        train(replace(TINY, steps=1, trainable="decoder"))


@pytest.mark.usefixtures("one_torch_thread")
def test_bf16_autocast_step_tracks_the_float32_step() -> None:
    """The bf16 option changes arithmetic precision only: one step's losses agree with float32's."""
    reports: dict[bool, StepReport] = {}
    for bf16 in (False, True):

        def keep(report: StepReport, _model: object, bf16: bool = bf16) -> None:
            reports[bf16] = report

        train(replace(TINY, steps=1, bf16=bf16), on_step=keep)
    assert reports[True].loss == pytest.approx(reports[False].loss, rel=0.02)
    assert reports[True].iou_loss == pytest.approx(reports[False].iou_loss, rel=0.1, abs=1e-3)
