"""numpy's BLAS on one thread while samdeploy multiplies small matrices between model calls.

numpy's OpenBLAS (or MKL) splits even small products over every core, and its threads then spin
for a while waiting for more work. The mask upscaling is a series of small banded products run
between two ONNX Runtime calls: on 2 cores the spinning BLAS threads took a core from the next
decoder call and doubled its time (vit_b, one point: decoder 88 -> 45 ms, upscaling 20 -> 4 ms
with BLAS on one thread; docs/performance.md). :func:`single_threaded_blas` limits BLAS to one
thread for the duration of a block, then restores the process's setting. Nested and concurrent
blocks (several executor threads) share one limit: the first to enter sets it, the last to leave
restores it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

_lock = threading.Lock()
_depth = 0
_limiter: Any = None


@cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS limited to one thread."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            _limiter = _controller().limit(limits=1, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
