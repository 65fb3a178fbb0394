"""samdeploy's SAM2ImagePredictor against the official sam2 SAM2ImagePredictor, on the same weights.

The bar: masks agree on >= 99.9% of pixels; scores and low-res logits within 1e-3. Every image shape
runs the whole prompt list on one encoded image; the worst figures are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("sam2")

import samdeploy  # noqa: E402
from samdeploy.errors import PackageError, PromptError  # noqa: E402
from samdeploy.sam2.transforms import select_masks  # noqa: E402

PIXEL_AGREEMENT = 0.999
TOLERANCE = 1e-3


@dataclass
class Worst:
    agreement: float = 1.0
    score: float = 0.0
    logits: float = 0.0
    count: int = 0

    def add(self, ours: tuple, official: tuple) -> None:
        masks, scores, low_res = ours
        o_masks, o_scores, o_low_res = official
        assert masks.shape == o_masks.shape and masks.dtype == o_masks.dtype == np.float32
        assert scores.shape == o_scores.shape and scores.dtype == np.float32
        assert low_res.shape == o_low_res.shape and low_res.dtype == np.float32
        self.agreement = min(self.agreement, float(np.mean((masks > 0) == (o_masks > 0))))
        self.score = max(self.score, float(np.abs(scores - o_scores).max()))
        self.logits = max(self.logits, float(np.abs(low_res - o_low_res).max()))
        self.count += 1

    def check(self, label: str) -> None:
        print(
            f"\n{label}: {self.count} predictions, worst pixel agreement {self.agreement:.6f},"
            f" max score diff {self.score:.2e}, max low-res logit diff {self.logits:.2e}"
        )
        assert self.agreement >= PIXEL_AGREEMENT
        assert self.score <= TOLERANCE
        assert self.logits <= TOLERANCE


def _image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xx * 0.7) % 255, (yy * 1.1) % 255, ((xx + yy) * 0.4) % 255], axis=-1)
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)


def _prompts(height: int, width: int) -> list[dict]:
    """Prompt keyword sets in pixels of an HxW image (mask_input chains are added by the test)."""
    point = np.array([[0.3 * width, 0.4 * height]])
    box = np.array([0.1 * width, 0.15 * height, 0.6 * width, 0.7 * height])
    boxes = np.array(
        [
            [0.1 * width, 0.15 * height, 0.6 * width, 0.7 * height],
            [0.5 * width, 0.2 * height, 0.95 * width, 0.9 * height],
        ]
        + [[0.2 * width, 0.5 * height, 0.4 * width, 0.95 * height]]
    )
    negatives = np.array(
        [[0.3 * width, 0.4 * height], [0.8 * width, 0.7 * height], [0.5 * width, 0.1 * height]]
    )
    cases = []
    for multimask in (True, False):
        cases += [
            dict(point_coords=point, point_labels=np.array([1]), multimask_output=multimask),
            dict(point_coords=negatives, point_labels=np.array([1, 0, 0]), multimask_output=multimask),
            dict(box=box, multimask_output=multimask),
            dict(box=box, point_coords=point, point_labels=np.array([0]), multimask_output=multimask),
            dict(box=boxes, multimask_output=multimask),
            dict(
                point_coords=point / [width, height],
                point_labels=[1],
                normalize_coords=False,
                multimask_output=multimask,
            ),
            dict(
                point_coords=negatives,
                point_labels=[1, 0, -1],
                multimask_output=multimask,
                return_logits=True,
            ),
        ]
    return cases


SHAPES = [(200, 300), (300, 200), (256, 256), (40, 500), (900, 1100)]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{h}x{w}" for h, w in SHAPES])
def test_predict_matches_the_official_predictor(sam2_package, official_predictor, shape):
    image = _image(*shape, seed=shape[0])
    predictor = samdeploy.SAM2ImagePredictor(samdeploy.load_model(sam2_package))
    predictor.set_image(image)
    official_predictor.set_image(image)
    ours_embed = predictor.get_image_embedding()
    theirs_embed = official_predictor.get_image_embedding().numpy()
    assert np.abs(ours_embed - theirs_embed).max() <= TOLERANCE * max(1.0, np.abs(theirs_embed).max())
    worst = Worst()
    for kwargs in _prompts(*shape):
        worst.add(predictor.predict(**kwargs), official_predictor.predict(**kwargs))
    # mask_input chains: the best low-res logits of a click fed back with a second click, twice.
    point = np.array([[0.3 * shape[1], 0.4 * shape[0]]])
    _, scores, low_res = official_predictor.predict(point_coords=point, point_labels=[1])
    chain = low_res[np.argmax(scores)][None]
    clicks = point
    for step in range(2):
        clicks = np.concatenate([clicks, [[(0.5 + 0.2 * step) * shape[1], 0.6 * shape[0]]]])
        labels = np.array([1] + [step % 2] * (len(clicks) - 1))
        kwargs = dict(point_coords=clicks, point_labels=labels, mask_input=chain, multimask_output=False)
        ours = predictor.predict(**kwargs)
        theirs = official_predictor.predict(**kwargs)
        worst.add(ours, theirs)
        chain = theirs[2]
    worst.add(predictor.predict(mask_input=chain), official_predictor.predict(mask_input=chain))
    worst.check(f"{shape[0]}x{shape[1]}")


def test_batch_of_images_matches_the_official_predictor(sam2_package, official_predictor):
    images = [_image(180, 240, 1), _image(320, 200, 2)]
    predictor = samdeploy.SAM2ImagePredictor(samdeploy.load_model(sam2_package))
    predictor.set_image_batch(images)
    official_predictor.set_image_batch(images)
    kwargs = dict(
        point_coords_batch=[np.array([[50, 60]]), np.array([[100, 150], [20, 30]])],
        point_labels_batch=[np.array([1]), np.array([1, 0])],
        box_batch=[None, np.array([10, 20, 150, 250])],
        multimask_output=False,
    )
    ours, theirs = predictor.predict_batch(**kwargs), official_predictor.predict_batch(**kwargs)
    worst = Worst()
    for i in range(len(images)):
        worst.add(tuple(out[i] for out in ours), tuple(out[i] for out in theirs))
    worst.check("image batch")
    assert predictor.get_image_embedding().shape == (2, 64, 16, 16)
    with pytest.raises(RuntimeError):
        samdeploy.SAM2ImagePredictor(predictor.model).predict_batch()


def test_bgr_and_pil_images_are_the_rgb_image(sam2_package):
    from PIL import Image

    image = _image(120, 160, 3)
    model = samdeploy.load_model(sam2_package, cache_mb=0)
    predictor = samdeploy.SAM2ImagePredictor(model)
    predictor.set_image(image)
    rgb = predictor.get_image_embedding().copy()
    predictor.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    assert np.array_equal(predictor.get_image_embedding(), rgb)
    predictor.set_image(Image.fromarray(image))
    assert np.array_equal(predictor.get_image_embedding(), rgb)


def test_masks_are_the_logits_above_the_predictors_threshold(sam2_package):
    """The package's threshold: the graph's block-thresholded masks; another one: the predictor
    thresholds the logits itself. Either way 0/1 float32 masks, those of the logits above it."""
    image = _image(150, 200, 4)
    model = samdeploy.load_model(sam2_package, cache_mb=0)
    prompt = dict(point_coords=np.array([[60.0, 70.0]]), point_labels=np.array([1]))
    predictor = samdeploy.SAM2ImagePredictor(model)
    predictor.set_image(image)
    logits, _, _ = predictor.predict(**prompt, return_logits=True)
    # The package's threshold (0) and two others inside the logits' range (random weights).
    for threshold in (0.0, float(np.quantile(logits, 0.3)), float(np.quantile(logits, 0.8))):
        predictor = samdeploy.SAM2ImagePredictor(model, mask_threshold=threshold)
        predictor.set_image(image)
        masks, _, _ = predictor.predict(**prompt)
        assert masks.dtype == np.float32 and set(np.unique(masks)) <= {0.0, 1.0}
        np.testing.assert_array_equal(masks, (logits > np.float32(threshold)).astype(np.float32))
        assert 0 < masks.mean() < 1


def test_dynamic_multimask_selection_follows_stability():
    """Token 0 kept when stable (>= 0.98 of its +-0.05 area), else the best multimask token."""
    low_res = np.zeros((2, 4, 8, 8), np.float32)
    low_res[0, 0] = 5.0  # prompt 0: token 0 stable (every logit far from 0)
    low_res[1, 0] = np.linspace(-0.04, 0.04, 64).reshape(8, 8)  # prompt 1: token 0 unstable
    low_res[:, 1:] = np.arange(1, 4, dtype=np.float32)[None, :, None, None]
    scores = np.array([[0.5, 0.1, 0.9, 0.2], [0.5, 0.1, 0.2, 0.9]], np.float32)
    masks, chosen = select_masks(low_res, scores, multimask_output=False, dynamic=True)
    assert masks.shape == (2, 1, 8, 8) and chosen.tolist() == [[0.5], [pytest.approx(0.9)]]
    assert np.all(masks[0, 0] == 5.0) and np.all(masks[1, 0] == 3.0)
    masks, chosen = select_masks(low_res, scores, multimask_output=False, dynamic=False)
    assert chosen.tolist() == [[0.5], [0.5]]
    masks, chosen = select_masks(low_res, scores, multimask_output=True, dynamic=True)
    assert masks.shape == (2, 3, 8, 8) and np.allclose(chosen, scores[:, 1:])


def test_hole_and_sprinkle_options_do_what_the_official_cpu_path_does(sam2_package, sam2_model):
    """Without its CUDA extension the official predictor warns and leaves the masks unchanged."""
    from samdeploy.export.sam2 import official_predictor

    image = _image(150, 150, 4)
    official = official_predictor(sam2_model)
    official._transforms.max_hole_area = official._transforms.max_sprinkle_area = 50.0
    official.set_image(image)
    with pytest.warns(UserWarning):
        ours = samdeploy.SAM2ImagePredictor(
            samdeploy.load_model(sam2_package), max_hole_area=50, max_sprinkle_area=50
        )
    ours.set_image(image)
    kwargs = dict(point_coords=np.array([[40, 60]]), point_labels=np.array([1]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = official.predict(**kwargs)
    assert any("Skipping the post-processing" in str(w.message) for w in caught)
    worst = Worst()
    worst.add(ours.predict(**kwargs), theirs)
    worst.check("hole/sprinkle options")


def test_load_model_picks_the_family(sam2_package, tiny_package):
    from samdeploy.sam.model import SamModel, load_model
    from samdeploy.sam2.model import Sam2Model

    assert isinstance(samdeploy.load_model(sam2_package), Sam2Model)
    sam = samdeploy.load_model(tiny_package)
    assert isinstance(sam, SamModel) and not isinstance(sam, Sam2Model)
    # The SAM loader dispatches on the family too (the CLI and the server call it).
    assert isinstance(load_model(sam2_package), Sam2Model)


def test_predictors_refuse_the_other_family(sam2_package, tiny_package):
    with pytest.raises(PackageError, match="SAM2ImagePredictor"):
        samdeploy.SamPredictor(samdeploy.load_model(sam2_package))
    with pytest.raises(PackageError, match="SAM2AutomaticMaskGenerator"):
        samdeploy.SamAutomaticMaskGenerator(samdeploy.load_model(sam2_package))
    with pytest.raises(PackageError, match="SamPredictor"):
        samdeploy.SAM2ImagePredictor(samdeploy.load_model(tiny_package))
    with pytest.raises(PackageError, match="SamPredictor"):
        samdeploy.SAM2AutomaticMaskGenerator(samdeploy.load_model(tiny_package))
    with pytest.raises(PackageError, match="SamPredictor"):
        samdeploy.SAM2ImagePredictor(tiny_package)


def test_bad_input_gets_the_usual_errors(sam2_package):
    predictor = samdeploy.SAM2ImagePredictor(sam2_package)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=[[1, 2]], point_labels=[1])
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.get_image_embedding()
    predictor.set_image(_image(64, 64, 5))
    with pytest.raises(PromptError, match="point_labels"):
        predictor.predict(point_coords=[[1, 2]])
    with pytest.raises(PromptError, match="mask_input must be 1x64x64"):
        predictor.predict(point_coords=[[1, 2]], point_labels=[1], mask_input=np.zeros((1, 256, 256)))
    predictor.reset_predictor()
    assert predictor._is_image_set is False and predictor._features is None


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SAMDEPLOY_SAM2_HIERA"),
    reason="hiera tiny and base+ at 1024 px take 5-10 minutes each on 2 cores: set SAMDEPLOY_SAM2_HIERA=1",
)
@pytest.mark.parametrize("config_file", ["sam2.1_hiera_t.yaml", "sam2.1_hiera_b+.yaml"])
def test_official_sizes_match_the_official_predictor(tmp_path, config_file):
    """Random-weight hiera tiny and base+ at 1024 px: export (detected from the weights, validated),
    then the prompt list on two image shapes, against the official predictor."""
    import torch

    from samdeploy.export import export_model
    from samdeploy.export.sam2 import Sam2Config, official_config_path, official_predictor, random_sam2

    config = Sam2Config.from_yaml(official_config_path(f"configs/sam2.1/{config_file}"))
    model = random_sam2(config, seed=5)
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pt")
    report = export_model(tmp_path / "checkpoint.pt", tmp_path / "package")
    assert (
        report.model_type in ("sam2.1_hiera_tiny", "sam2.1_hiera_base_plus") and report.validation["passed"]
    )
    official = official_predictor(model)
    predictor = samdeploy.SAM2ImagePredictor(samdeploy.load_model(tmp_path / "package"))
    for shape in [(480, 640), (700, 500)]:
        image = _image(*shape, seed=7)
        predictor.set_image(image)
        official.set_image(image)
        worst = Worst()
        for kwargs in _prompts(*shape):
            worst.add(predictor.predict(**kwargs), official.predict(**kwargs))
        worst.check(f"{config_file} {shape[0]}x{shape[1]}")


def test_a_modified_sam2_package_is_refused_by_its_checksums(sam2_package, tmp_path):
    import shutil

    copy = tmp_path / "package"
    shutil.copytree(sam2_package, copy)
    encoder = copy / "image_encoder.onnx"
    data = bytearray(encoder.read_bytes())
    data[-1] ^= 0xFF  # same size: only the sha256 tells
    encoder.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="checksum mismatch"):
        samdeploy.load_model(copy)
    with pytest.raises(PackageError, match="checksum mismatch"):
        samdeploy.SAM2ImagePredictor(copy)


def test_clicks_take_the_decoder_cut_in_two_and_answer_as_the_whole_decoder(
    sam2_package, without_prepared_pair, count_runs
):
    """Why: a click without a mask_input runs the image side once per image and the prepared
    decoder per click (1.4x faster clicks on Hiera tiny); it must answer what the one decoder
    answers, which packages exported before the cut still run."""
    model = samdeploy.load_model(sam2_package)
    old = samdeploy.load_model(without_prepared_pair(sam2_package))
    assert model.prepared_decode_graph is not None and old.prepared_decode_graph is None
    side = model.prepared_decode_graph.nodes["image_side"]
    runs = count_runs(side)
    predictor, reference = samdeploy.SAM2ImagePredictor(model), samdeploy.SAM2ImagePredictor(old)
    for seed in (0, 1):
        image = _image(300, 200, seed)
        predictor.set_image(image)
        reference.set_image(image)
        worst = Worst()
        for kwargs in _prompts(300, 200):
            worst.add(predictor.predict(**kwargs), reference.predict(**kwargs))
        worst.check(f"prepared against the whole decoder, image {seed}")
        assert worst.score <= 1e-5 and worst.logits <= 1e-4  # float32 rounding, not the 1e-3 bar
    assert len(runs) == 2  # the image side once per image, whatever the number of clicks
    # A mask_input takes the whole decoder, in both.
    _, scores, low_res = predictor.predict(point_coords=[[50, 60]], point_labels=[1])
    chained = dict(mask_input=low_res[np.argmax(scores)][None], multimask_output=False)
    np.testing.assert_allclose(predictor.predict(**chained)[2], reference.predict(**chained)[2], atol=1e-5)
    assert len(runs) == 2


def test_a_prepared_decoder_that_does_not_fit_is_refused(sam2_package, tmp_path):
    """Why: a package whose manifest names the wrong file for the prepared decoder would fail at the
    first click, deep in a backend; loading it must say which file does not fit."""
    import json
    import shutil

    from samdeploy.package import write_manifest

    copy = tmp_path / "package"
    shutil.copytree(sam2_package, copy)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["models"]["mask_decoder_prepared"]["file"] = "mask_decoder.onnx"
    write_manifest(copy, manifest)
    with pytest.raises(PackageError, match="mask_decoder.onnx") as caught:
        samdeploy.load_model(copy)
    assert "\n" not in str(caught.value)
