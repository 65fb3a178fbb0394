"""numpy's BLAS thread limit (samdeploy.sam.blas): predictions from several threads at once give
exactly the sequential results, and the process's own BLAS setting comes back when samdeploy
no longer needs the limit (behaviour only: the speed is measured in docs/performance.md)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from samdeploy.sam import blas
from samdeploy.sam.model import load_model
from samdeploy.sam.predictor import SamPredictor

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> int | None:
    info = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"]
    return info[0]["num_threads"] if info else None


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    height, width = 60 + 10 * seed, 90 - 5 * seed
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    points = rng.uniform(0, [width, height], (2, 2))
    return image, points, np.array([1, 0])


def test_concurrent_predictions_equal_the_sequential_ones(tiny_package) -> None:
    cases = [_case(seed) for seed in range(4)]
    with load_model(tiny_package, threads=1, cache_mb=0) as sam:

        def predict(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
            predictor = SamPredictor(sam)
            image, points, labels = case
            predictor.set_image(image)
            masks, scores, low_res = predictor.predict(points, labels)
            logits, _, _ = predictor.predict(points, labels, return_logits=True)
            return masks, scores, low_res, logits

        expected = [predict(case) for case in cases]
        results: dict[int, tuple[np.ndarray, ...]] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(len(cases))

        def worker(index: int) -> None:
            try:
                start.wait()
                for _ in range(3):  # several rounds, so the threads' upscalings overlap
                    results[index] = predict(cases[index])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for index, want in enumerate(expected):
            for got, ref in zip(results[index], want, strict=True):
                np.testing.assert_array_equal(got, ref)


def test_a_loaded_model_holds_the_limit_until_closed(tiny_package) -> None:
    before, threads_before = blas.blas_limited(), _blas_threads()
    sam = load_model(tiny_package, threads=1, cache_mb=0)
    assert blas.blas_limited()
    if threads_before is not None:
        assert _blas_threads() == 1
    sam.close()
    sam.close()  # a second close releases nothing more
    assert blas.blas_limited() == before and _blas_threads() == threads_before


def test_holds_and_blocks_nest_and_restore() -> None:
    before, threads_before = blas.blas_limited(), _blas_threads()
    with blas.hold_single_threaded_blas():
        with blas.single_threaded_blas(), blas.single_threaded_blas():
            assert blas.blas_limited()
        assert blas.blas_limited()
    assert blas.blas_limited() == before and _blas_threads() == threads_before


def test_overlapping_blocks_keep_the_limit_until_restored() -> None:
    before = blas.blas_limited()
    inside, leave = threading.Event(), threading.Event()

    def hold_a_block() -> None:
        with blas.single_threaded_blas():
            inside.set()
            leave.wait()

    other = threading.Thread(target=hold_a_block)
    other.start()
    inside.wait()
    with blas.single_threaded_blas():  # overlaps the other thread's block
        pass
    leave.set()
    other.join()
    assert blas.blas_limited()  # pinned: concurrent callers no longer switch it per call
    blas.restore_blas_threads()
    assert blas.blas_limited() == before
