"""The decoder cut in two for prompts without a ``mask_input``: its image side, once per image, and
the prepared decoder, per prompt.

Why: interactive prompting (the predictor, the server, the web page) takes this path whenever the
package has it, so every click's masks come from it. These tests hold it to the official decoder on
the same weights for the prompt shapes the predictor sends, check that a ``mask_input`` still takes
the full decoder (the image side assumes none), that the image side runs once per image and not per
click, and that a package exported before the cut answers the same.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from samdeploy import SamPredictor, load_model
from samdeploy.engine import Profile
from samdeploy.package import IMAGE_SIDE, IMAGE_SIDE_OUTPUTS, PREPARED_DECODER, ModelPackage

torch = pytest.importorskip("torch")
onnx_utils = pytest.importorskip("segment_anything.utils.onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (90, 160, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("prompts", "points"), [(1, 2), (4, 2), (2, 5)], ids=["one-point", "box-batch", "many-points"]
)
def test_image_side_and_prepared_decoder_equal_the_official_decoder(tiny_sam, tiny_package, prompts, points):
    package = ModelPackage.load(tiny_package)
    assert package.has_prepared_decoder
    side = ort.InferenceSession(str(package.model_path(IMAGE_SIDE)), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(
        str(package.model_path(PREPARED_DECODER)), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(prompts * 10 + points)
    grid, size = package.manifest["embedding_size"][0], package.image_size
    embeddings = rng.standard_normal((1, 256, grid, grid)).astype(np.float32)
    coords = rng.uniform(0, size, (prompts, points, 2)).astype(np.float32)
    labels = rng.integers(-1, 4, (prompts, points)).astype(np.float32)
    image_feeds = dict(zip(IMAGE_SIDE_OUTPUTS, side.run(None, {"image_embeddings": embeddings}), strict=True))
    iou, low_res = decoder.run(None, {**image_feeds, "point_coords": coords, "point_labels": labels})

    official = onnx_utils.SamOnnxModel(tiny_sam, return_single_mask=False)
    with torch.no_grad():
        masks, scores = tiny_sam.mask_decoder.predict_masks(
            torch.from_numpy(embeddings),
            tiny_sam.prompt_encoder.get_dense_pe(),
            official._embed_points(torch.from_numpy(coords), torch.from_numpy(labels)),
            official._embed_masks(torch.zeros(1, 1, 4 * grid, 4 * grid), torch.zeros(1)),
        )
    assert low_res.shape == tuple(masks.shape) and iou.shape == tuple(scores.shape)
    np.testing.assert_allclose(low_res, masks.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(iou, scores.numpy(), rtol=1e-4, atol=1e-5)


def _counting(model) -> list[int]:
    """Count the runs of the prepared graph's image side (its backend, behind the node's memo)."""
    node = model.prepared_decode_graph.nodes["image_side"]
    node.ensure_setup()
    backend, runs = node._backend, [0]

    class Counting:
        def run(self, feeds, names):
            runs[0] += 1
            return backend.run(feeds, names)

    node._backend = Counting()
    return runs


def test_clicks_on_one_image_run_its_image_side_once(tiny_package, image) -> None:
    predictor = SamPredictor(load_model(tiny_package, threads=1))
    runs = _counting(predictor.model)
    predictor.set_image(image)
    predictor.profile = Profile()
    for x in (10, 40, 80, 120):
        predictor.predict(point_coords=np.array([[x, 45]]), point_labels=np.array([1]))
    predictor.predict(box=np.array([[10, 10, 100, 80], [0, 0, 50, 50]]))
    assert runs[0] == 1
    assert predictor.profile["image_side"].count == 5  # asked each time, answered from the memo
    predictor.set_image(image[::-1].copy())  # another image: its own image side
    predictor.predict(point_coords=np.array([[40, 45]]), point_labels=np.array([1]))
    assert runs[0] == 2


def test_mask_input_takes_the_full_decoder(tiny_package, image) -> None:
    """The image side holds the no-mask embedding; a previous mask must go through the decoder
    that embeds it, or the refinement would silently ignore it."""
    predictor = SamPredictor(load_model(tiny_package, threads=1))
    predictor.set_image(image)
    point = {"point_coords": np.array([[80, 45]]), "point_labels": np.array([1])}
    _, scores, low_res = predictor.predict(**point)
    predictor.profile = Profile()
    refined = predictor.predict(**point, mask_input=low_res[np.argmax(scores)][None])
    assert predictor.profile["mask_decoder"].count == 1
    assert "image_side" not in [stats.node for stats in predictor.profile.stats()]  # the full decoder ran
    assert not np.allclose(refined[2], low_res, atol=1e-3)


def test_package_without_the_cut_gives_the_same_answers(tiny_package, package_without, image) -> None:
    old = package_without(tiny_package, IMAGE_SIDE, PREPARED_DECODER)
    new_predictor = SamPredictor(load_model(tiny_package, threads=1))
    old_predictor = SamPredictor(load_model(old, threads=1))
    assert new_predictor.model.prepared_decode_graph is not None
    assert old_predictor.model.prepared_decode_graph is None
    for predictor in (new_predictor, old_predictor):
        predictor.set_image(image)
    for prompt in (
        {"point_coords": np.array([[80, 45], [20, 70]]), "point_labels": np.array([1, 0])},
        {"box": np.array([[10, 10, 100, 80], [0, 0, 160, 90]])},
    ):
        new, old_answer = new_predictor.predict(**prompt), old_predictor.predict(**prompt)
        np.testing.assert_allclose(new[1], old_answer[1], atol=1e-6)
        np.testing.assert_allclose(new[2], old_answer[2], atol=1e-5)
        assert np.mean(new[0] == old_answer[0]) > 0.9999


def test_a_prepared_decoder_without_its_inputs_is_refused(tiny_package, tmp_path) -> None:
    """A package whose prepared decoder file does not take the image side's tensors (a wrong file
    under that name) fails at load with the file named, not at the first click."""
    from samdeploy import PackageError
    from samdeploy.package import describe_files

    bad = tmp_path / "bad"
    shutil.copytree(tiny_package, bad)
    shutil.copy(bad / "mask_decoder_low_res.onnx", bad / f"{PREPARED_DECODER}.onnx")
    manifest = json.loads((bad / "model.json").read_text())
    manifest["files"].update(describe_files(bad, [f"{PREPARED_DECODER}.onnx"]))
    (bad / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match=f"{PREPARED_DECODER}.onnx lacks the inputs image_tokens"):
        load_model(bad, threads=1)


def test_solo_threads_reach_the_decoders_and_answer_as_they_do_on_that_many(
    tiny_package, image, monkeypatch
) -> None:
    """Why: ``solo_threads`` (the server's lone clicks on every core) must reach each decoder-side
    model, the image side, the prepared and the full decoder, but not the encoder, whose second
    session would double the largest model's memory; and a solo call must answer exactly as the
    same decoders do on that many threads."""
    from samdeploy import limits
    from samdeploy.engine import Inference
    from samdeploy.engine.inference import RunCount
    from samdeploy.sam.prompts import validate_prompt

    if limits.max_threads() < 2:
        pytest.skip("one CPU: nothing to run solo on")
    # A run count of the test's own: no other test's background run may look concurrent.
    monkeypatch.setattr("samdeploy.engine.inference.RUNS", RunCount())
    model = load_model(tiny_package, threads=1, solo_threads=2)
    wide = load_model(tiny_package, threads=2)
    try:
        graphs = (model.encode_graph, model.decode_graph, model.prepared_decode_graph)
        solo = {
            (graph.name, name): node.solo
            for graph in graphs
            for name, node in graph.nodes.items()
            if isinstance(node, Inference)
        }
        assert solo == {
            ("encode", "image_encoder"): False,
            ("decode", "mask_decoder"): True,
            ("decode_prepared", "image_side"): True,
            ("decode_prepared", "mask_decoder"): True,
        }
        embedding = model.encode(image)
        prompts = (
            validate_prompt(np.array([[80.0, 45.0], [20.0, 70.0]]), np.array([1, 0])),
            validate_prompt(
                box=np.array([[10.0, 10.0, 100.0, 80.0]]),
                mask_input=np.zeros((1, 1, *model.mask_input_size), np.float32),
                mask_input_size=model.mask_input_size,
            ),
        )
        for prompt in prompts:
            got, expected = model.decode(embedding, prompt), wide.decode(embedding, prompt)
            for name in ("masks", "scores", "low_res_logits"):
                np.testing.assert_array_equal(got[name], expected[name])
        runs = [
            graph.nodes["mask_decoder"].solo_runs
            for graph in (model.prepared_decode_graph, model.decode_graph)
        ]
        assert runs == [1, 1]  # the points took the prepared decoder, the mask_input the full one
    finally:
        model.close()
        wide.close()


def test_solo_threads_only_for_decoder_side_models_on_the_cpu() -> None:
    """Why: on a GPU intra-op threads do not run the model, and a second TensorRT session would build
    its engines twice; the encoder never gets one (memory)."""
    from samdeploy.package import ENCODER
    from samdeploy.sam.graphs import BackendOptions

    def solo(options: BackendOptions, role: str) -> int | None:
        return options.params("m.onnx", [], role=role).get("solo_threads")

    assert solo(BackendOptions(threads=1, solo_threads=2), PREPARED_DECODER) == 2
    assert solo(BackendOptions(threads=1, solo_threads=2, providers=["cpu"]), IMAGE_SIDE) == 2
    assert solo(BackendOptions(threads=1, solo_threads=2), ENCODER) is None
    assert (
        solo(BackendOptions(threads=1, solo_threads=2, providers=["cuda", "cpu"]), PREPARED_DECODER) is None
    )
    assert solo(BackendOptions(threads=0, solo_threads=2), PREPARED_DECODER) is None
