"""A SamPredictor shared by threads answers each thread for the image that thread set; the
model's encode/decode are safe to share."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from samdeploy import SamPredictor, load_model
from samdeploy.sam.prompts import validate_prompt

THREADS = 4
BARRIER_TIMEOUT_S = 60.0  # a thread that never reaches the barrier fails the test after this


def images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (48 + 4 * i, 64, 3), dtype=np.uint8) for i in range(count)]


@pytest.fixture(scope="module")
def model(tiny_package):
    with load_model(tiny_package, threads=1) as loaded:
        yield loaded


def test_shared_predictor_answers_each_thread_for_its_own_image(model) -> None:
    pictures = images(THREADS)
    point = np.array([[20.0, 20.0]]), np.array([1])
    alone = SamPredictor(model)
    expected = []
    for picture in pictures:
        alone.set_image(picture)
        expected.append(alone.predict(*point, multimask_output=False, return_logits=True))
    shared = SamPredictor(model)
    # Every thread sets its image, then all predict: with one image per predictor, every thread
    # but the last one to set would get the last one's image.
    barrier = threading.Barrier(THREADS, timeout=BARRIER_TIMEOUT_S)

    def work(index: int):
        results = []
        for _ in range(3):
            shared.set_image(pictures[index])
            barrier.wait()
            results.append(
                (shared.original_size, shared.predict(*point, multimask_output=False, return_logits=True))
            )
            barrier.wait()
        return results

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(work, range(THREADS)))
    for index, results in enumerate(outcomes):
        for size, (masks, scores, low_res) in results:
            assert size == pictures[index].shape[:2]
            np.testing.assert_array_equal(masks, expected[index][0])
            np.testing.assert_array_equal(scores, expected[index][1])
            np.testing.assert_array_equal(low_res, expected[index][2])


def test_image_set_in_one_thread_serves_threads_that_set_none(model) -> None:
    picture = images(1)[0]
    predictor = SamPredictor(model)
    predictor.set_image(picture)
    mine = predictor.predict(np.array([[10.0, 10.0]]), np.array([1]))
    with ThreadPoolExecutor(2) as pool:
        theirs = pool.submit(predictor.predict, np.array([[10.0, 10.0]]), np.array([1])).result()
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    predictor.reset_image()
    with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="must be set"):
        pool.submit(predictor.predict, np.array([[10.0, 10.0]]), np.array([1])).result()


def test_model_encode_and_decode_are_thread_safe(model) -> None:
    pictures = images(8)
    prompt = validate_prompt(np.array([[12.0, 9.0], [30.0, 20.0]]), np.array([1, 0]))

    def run(picture: np.ndarray):
        embedding = model.encode(picture)
        out = model.decode(embedding, prompt, return_logits=True)
        return embedding.embeddings, out["masks"], out["scores"]

    expected = [run(picture) for picture in pictures]
    model.cache.clear()
    with ThreadPoolExecutor(THREADS) as pool:
        got = list(pool.map(run, pictures * 3))
    for index, result in enumerate(got):
        for a, b in zip(result, expected[index % len(pictures)], strict=True):
            np.testing.assert_array_equal(a, b)
