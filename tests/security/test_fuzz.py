"""Fuzzing (hypothesis, bounded examples): a mutated manifest and any prompt give a result or the
documented exception, never another exception, never a non-finite output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samdeploy import SamPredictor, load_model
from samdeploy.errors import PackageError, PromptError, SamDeployError
from samdeploy.package import ModelPackage
from samdeploy.sam.model import DEFAULT_MODEL


def fuzz(examples: int) -> settings:
    """Bounded, reproducible runs (the same examples every time), no per-example deadline."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "..", "/etc/passwd", "../model.json", "image_encoder.onnx", "model.json", "sam2.1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value of a JSON tree (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


BASE = json.loads((DEFAULT_MODEL / "model.json").read_text())
# The export report is free-form: mutate what the runtime reads.
PATHS = [p for p in paths(BASE) if p[0] not in ("export", "architecture")]
mutations = st.lists(
    st.tuples(st.sampled_from(PATHS), st.one_of(st.just("<delete>"), json_values)), min_size=1, max_size=3
)


def mutate(manifest: dict, edits: list[tuple[tuple, Any]]) -> dict:
    for path, value in edits:
        node: Any = manifest
        try:
            for key in path[:-1]:
                node = node[key]
            if value == "<delete>":
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    return manifest


@pytest.fixture(scope="module")
def fuzz_package(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("fuzz") / "pkg"
    shutil.copytree(DEFAULT_MODEL, target, ignore=shutil.ignore_patterns("checkpoint.pth"))
    return target


def read_everything(package: ModelPackage) -> None:
    """Every accessor a runtime uses works on a package that loaded."""
    assert package.image_size > 0 and all(np.isfinite(package.pixel_mean))
    assert all(value > 0 for value in package.pixel_std)
    assert min(package.mask_input_size) > 0
    for role in package.manifest["models"]:
        assert package.model(role).inputs and package.model_path(role).is_file()
        package.runtime(role)
    package.generator, package.family, package.precision, package.prompt_decoder_inputs  # noqa: B018


@fuzz(150)
@given(edits=mutations)
def test_mutated_manifest_loads_or_is_a_package_error(fuzz_package, edits) -> None:
    manifest = mutate(json.loads(json.dumps(BASE)), edits)
    (fuzz_package / "model.json").write_text(json.dumps(manifest))  # NaN written as NaN on purpose
    try:
        package = ModelPackage.load(fuzz_package)
    except PackageError as exc:
        assert "\n" not in str(exc)
        return
    read_everything(package)


@fuzz(15)
@given(edits=mutations)
def test_mutated_manifest_runs_or_is_refused(fuzz_package, edits) -> None:
    manifest = mutate(json.loads(json.dumps(BASE)), edits)
    (fuzz_package / "model.json").write_text(json.dumps(manifest))
    try:
        model = load_model(fuzz_package, threads=1, cache_mb=0)
    except SamDeployError as exc:
        assert "\n" not in str(exc)
        return
    with model:
        predictor = SamPredictor(model)
        predictor.set_image(np.full((20, 30, 3), 100, np.uint8))
        masks, scores, low_res = predictor.predict(np.array([[5.0, 5.0]]), np.array([1]), return_logits=True)
        assert np.isfinite(masks).all() and np.isfinite(scores).all() and np.isfinite(low_res).all()


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-300, max_value=300),
    st.sampled_from([0.0, -1.0, 1e39, -1e39, 2.0**24, 2.0**24 + 2, 1e-300, 3.4e38]),
)


def arrays(shape: st.SearchStrategy, elements: st.SearchStrategy) -> st.SearchStrategy:
    return shape.flatmap(
        lambda s: st.lists(elements, min_size=int(np.prod(s)), max_size=int(np.prod(s))).map(
            lambda values, s=s: np.array(values, dtype=np.float64).reshape(s)
        )
    )


small_shapes = st.one_of(
    st.tuples(st.integers(0, 5), st.just(2)),
    st.tuples(st.integers(1, 3), st.integers(0, 4), st.just(2)),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
label_values = st.sampled_from([-1.0, 0.0, 1.0, 1.0, 2.0, 3.0, 0.5, float("nan")])


@st.composite
def prompts(draw) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    if draw(st.booleans()):
        coords = draw(arrays(small_shapes, numbers))
        prompt["point_coords"] = coords
        label_shape = coords.shape[:-1] if draw(st.integers(0, 9)) else (coords.shape[0] + 1,)
        prompt["point_labels"] = draw(arrays(st.just(label_shape), label_values))
    if draw(st.booleans()):
        prompt["box"] = draw(arrays(st.sampled_from([(4,), (1, 4), (2, 4), (3,), (2, 3)]), numbers))
    if draw(st.integers(0, 3)) == 0:
        side = draw(st.sampled_from([64, 63]))
        fill = draw(numbers)
        prompt["mask_input"] = np.full((1, side, side), fill)
    prompt["multimask_output"] = draw(st.booleans())
    return prompt


@pytest.fixture(scope="module")
def predictor(tiny_package) -> SamPredictor:
    model = load_model(tiny_package, threads=1)
    predictor = SamPredictor(model)
    predictor.set_image(np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    yield predictor
    model.close()


@fuzz(120)
@given(prompt=prompts())
def test_any_prompt_gives_finite_masks_or_a_prompt_error(predictor, prompt) -> None:
    try:
        masks, scores, low_res = predictor.predict(**prompt, return_logits=True)
    except PromptError as exc:
        assert "\n" not in str(exc)
        return
    assert np.isfinite(masks).all() and np.isfinite(scores).all() and np.isfinite(low_res).all()
