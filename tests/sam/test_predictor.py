"""The SamPredictor API beyond parity: state, errors, batches, the embedding cache, load_model."""

from __future__ import annotations

import numpy as np
import pytest

import samdeploy
from samdeploy import ImageError, PackageError, PromptError, SamPredictor, load_model
from samdeploy.engine import Profile
from samdeploy.sam import model as model_module


@pytest.fixture(scope="module")
def predictor(tiny_package) -> SamPredictor:
    return SamPredictor(load_model(tiny_package, threads=1))


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8)


def test_state_and_shapes(predictor: SamPredictor, image: np.ndarray) -> None:
    predictor.reset_image()
    assert not predictor.is_image_set and predictor.features is None
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()
    predictor.set_image(image)
    assert predictor.is_image_set
    assert predictor.original_size == (90, 160) and predictor.input_size == (144, 256)
    assert predictor.get_image_embedding().shape == (1, 256, 16, 16)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[80, 45]]), point_labels=np.array([1]))
    assert masks.shape == (3, 90, 160) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 64, 64)
    logits, _, _ = predictor.predict(
        box=np.array([10, 10, 100, 80]), multimask_output=False, return_logits=True
    )
    assert logits.shape == (1, 90, 160) and logits.dtype == np.float32


def test_box_batch_is_one_decoder_call(predictor: SamPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    boxes = np.array([[0, 0, 50, 50], [20, 20, 150, 80], [5, 5, 6, 6], [0, 0, 160, 90]])
    predictor.profile = Profile()
    try:
        masks, scores, low_res = predictor.predict(box=boxes)
        assert predictor.profile["mask_decoder"].count == 1
    finally:
        predictor.profile = None
    assert masks.shape == (4, 3, 90, 160) and scores.shape == (4, 3) and low_res.shape == (4, 3, 64, 64)
    for i, box in enumerate(boxes):  # each row equals its own single call
        single = predictor.predict(box=box)
        np.testing.assert_allclose(single[2], low_res[i], atol=1e-4)
        assert np.mean(single[0] == masks[i]) > 0.999
    batch = predictor.predict_batch(
        point_coords=np.array([[[10, 10]], [[100, 50]]]), point_labels=np.ones((2, 1))
    )
    assert batch[0].shape == (2, 3, 90, 160)


def test_embedding_cache_by_content(tiny_package, image: np.ndarray) -> None:
    model = load_model(tiny_package, threads=1, cache_mb=1)
    predictor = SamPredictor(model)
    predictor.set_image(image)
    predictor.set_image(image.copy())  # same content, another array
    assert (model.cache.hits, model.cache.misses) == (1, 1)
    predictor.set_image(image, image_format="BGR")  # other channel order: another image
    assert model.cache.misses == 2
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]))  # its RGB twin: the same image
    assert (model.cache.hits, model.cache.misses) == (2, 2)
    assert not predictor.get_image_embedding().flags.writeable
    assert model.cache.nbytes <= 2**20  # 1 MB bound: 256 KiB embeddings (1x256x16x16), 4 kept
    for seed in range(20):
        predictor.set_image(np.full((8, 8, 3), seed, np.uint8))
    assert len(model.cache) == 4
    uncached = load_model(tiny_package, threads=1, cache_mb=0)
    SamPredictor(uncached).set_image(image)
    assert len(uncached.cache) == 0


def test_bad_inputs_raise_documented_errors(predictor: SamPredictor, image: np.ndarray) -> None:
    predictor.set_image(image)
    with pytest.raises(PromptError, match="mask_input must be 1x64x64"):
        predictor.predict(
            point_coords=np.array([[1, 1]]), point_labels=np.array([1]), mask_input=np.zeros((1, 256, 256))
        )
    with pytest.raises(PromptError, match="inverted"):
        predictor.predict(box=np.array([50, 50, 10, 10]))
    with pytest.raises(ImageError, match="uint8"):
        predictor.set_image(image.astype(np.float32))
    with pytest.raises(ImageError, match="image_format"):
        predictor.set_image(image, image_format="HSV")
    with pytest.raises(ImageError, match="numpy array"):
        predictor.set_image([[1, 2]])
    with pytest.raises(ImageError, match="too thin"):
        predictor.set_image(np.zeros((1, 600, 3), np.uint8))
    # Outside the image is allowed through the API, as in the official predictor.
    masks, _, _ = predictor.predict(point_coords=np.array([[500, -20]]), point_labels=np.array([1]))
    assert masks.shape == (3, 90, 160)


def test_load_model_errors(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "DEFAULT_MODEL", tmp_path / "default")
    with pytest.raises(PackageError, match="no embedded default model"):
        load_model()
    with pytest.raises(PackageError, match="not found"):
        load_model(tmp_path / "nothing")
    assert samdeploy.SamPredictor is SamPredictor


@pytest.mark.parametrize("mode", ["task", "pipeline"])
def test_every_executor_gives_the_same_result(
    tiny_package, predictor: SamPredictor, image: np.ndarray, mode
) -> None:
    kwargs = {
        "point_coords": np.array([[50, 40]]),
        "point_labels": np.array([1]),
        "box": np.array([[0, 0, 99, 80], [9, 9, 50, 50]]),
    }
    predictor.set_image(image)
    expected = predictor.predict(**kwargs)
    with load_model(tiny_package, mode=mode, threads=1) as model:
        other = SamPredictor(model)
        other.set_image(image)
        for ours, reference in zip(other.predict(**kwargs), expected, strict=True):
            np.testing.assert_array_equal(ours, reference)


def test_package_without_low_res_decoder_gives_the_same_answers(tiny_package, package_without, image) -> None:
    """Packages from before the low-res decoder prompt the official six-input graph instead."""
    # all three came later
    old = package_without(tiny_package, "mask_decoder_low_res", "mask_decoder_image", "mask_decoder_prepared")
    new_predictor = SamPredictor(load_model(tiny_package, threads=1))
    old_predictor = SamPredictor(load_model(old, threads=1))
    assert new_predictor.model.package.prompt_decoder == "mask_decoder_low_res"
    assert old_predictor.model.package.prompt_decoder == "mask_decoder"
    assert old_predictor.model.decode_graph.nodes["mask_decoder"].input_specs[-1].name == "orig_im_size"
    for predictor in (new_predictor, old_predictor):
        predictor.set_image(image)
    prompt = {"point_coords": np.array([[80, 45], [20, 70]]), "point_labels": np.array([1, 0])}
    new = new_predictor.predict(**prompt)
    old_answer = old_predictor.predict(**prompt)
    np.testing.assert_allclose(new[1], old_answer[1], atol=1e-6)
    np.testing.assert_allclose(new[2], old_answer[2], atol=1e-5)
    assert np.mean(new[0] == old_answer[0]) > 0.9999


def test_encoder_gives_its_activations_back(tiny_package) -> None:
    """The encoder session runs without ORT's CPU arena (its working set is freed after each run);
    the decoders keep theirs."""
    with load_model(tiny_package, threads=1) as model:
        assert model.encode_graph.nodes["image_encoder"].params.memory_arena is False
        assert model.decode_graph.nodes["mask_decoder"].params.memory_arena is True
        session = model.encode_graph.nodes["image_encoder"].backend._session
        assert session.get_session_options().enable_cpu_mem_arena is False


@pytest.mark.parametrize("with_boxes", [False, True])
def test_predict_batch_rows_equal_their_own_predict_calls(
    predictor: SamPredictor, image: np.ndarray, with_boxes: bool
) -> None:
    # Why: a batch of prompts with different points (and labels) per row must answer each row as
    # its own predict call would; a batch path that mixed rows up (the first row's points or
    # labels for all, rows shifted, boxes paired with the wrong points) gives other values here.
    predictor.set_image(image)
    coords = np.array([[[20, 15], [120, 70]], [[140, 20], [30, 80]], [[80, 45], [82, 47]]], dtype=np.float64)
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    boxes = np.array([[0, 0, 90, 60], [60, 10, 159, 89], [40, 20, 120, 70]]) if with_boxes else None
    masks, scores, low_res = predictor.predict_batch(point_coords=coords, point_labels=labels, boxes=boxes)
    assert masks.shape == (3, 3, 90, 160)
    for row in range(3):
        single = predictor.predict(
            point_coords=coords[row], point_labels=labels[row], box=None if boxes is None else boxes[row]
        )
        np.testing.assert_allclose(single[2], low_res[row], atol=1e-4)
        np.testing.assert_allclose(single[1], scores[row], atol=1e-5)
        assert np.mean(single[0] == masks[row]) > 0.999
    # The rows are different prompts with different answers, or the check above could not fail.
    assert not np.allclose(low_res[0], low_res[1], atol=1e-2)
    assert not np.allclose(low_res[1], low_res[2], atol=1e-2)
