"""numpy's BLAS on one thread while samdeploy multiplies small matrices between model calls.

numpy's OpenBLAS (or MKL) splits even small products over every core, and its threads then spin
for a while waiting for more work. The mask upscaling is a series of small banded products run
between two ONNX Runtime calls: on 2 cores the spinning BLAS threads took a core from the next
decoder call and doubled its time (vit_b, one point: decoder 88 -> 45 ms, upscaling 20 -> 4 ms
with BLAS on one thread; docs/performance.md).

:func:`single_threaded_blas` limits BLAS to one thread for the duration of a block, then restores
the process's setting. The limit is process-wide (threadpoolctl sets the BLAS library's thread
count), so blocks share one: nested and overlapping blocks count, the first to enter sets it and
the last to leave restores it. Changing the setting is what costs: switching it back and forth
while other threads run BLAS made four threads predicting at once ~40x slower (4 threads x 5 mask
upscalings: 8.9 s against 0.54 s with the limit kept). So the limit is changed as rarely as can be:

- While a hold (:func:`hold_single_threaded_blas`) is open every block only counts, never
  switches. A loaded :class:`~samdeploy.sam.model.SamModel` holds it from its load to its
  ``close()``, and the server for its life, so predictions never switch it.
- Once blocks of two threads overlap, the process is predicting concurrently: the limit then
  stays set after the last block leaves, until :func:`restore_blas_threads` (or the process ends).
  Without a hold, a single-threaded caller keeps the per-block behaviour.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

_lock = threading.Lock()
_depth = 0  # blocks running, over all threads
_holds = 0  # hold_single_threaded_blas() contexts open
_pinned = False  # blocks of two threads overlapped: keep the limit until restore_blas_threads()
_limiter: Any = None  # threadpoolctl's limiter while the limit is set
_local = threading.local()  # this thread's nesting depth


@cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _set() -> None:
    global _limiter
    if _limiter is None:
        _limiter = _controller().limit(limits=1, user_api="blas")


def _restore_if_unused() -> None:
    global _limiter
    if _limiter is not None and _depth == 0 and _holds == 0 and not _pinned:
        _limiter.restore_original_limits()
        _limiter = None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run the block with numpy's BLAS limited to one thread (see the module docs for when the
    process's own setting comes back)."""
    global _depth, _pinned
    mine = getattr(_local, "depth", 0)
    with _lock:
        if _depth > mine:  # another thread is inside a block right now
            _pinned = True
        _set()
        _depth += 1
    _local.depth = mine + 1
    try:
        yield
    finally:
        _local.depth = mine
        with _lock:
            _depth -= 1
            _restore_if_unused()


class BlasHold:
    """Numpy's BLAS kept on one thread until :meth:`release` (or the end of a ``with`` block).

    While any hold is open, :func:`single_threaded_blas` blocks (from any thread) only count and
    never change the process-wide setting. Holds nest and count; the process's setting comes back
    when the last hold and block end (unless concurrent blocks pinned it, see
    :func:`restore_blas_threads`). Take it on the thread that will keep it, ideally the main
    thread: this OpenBLAS (0.3.31) ignores a thread-count change from another thread once the
    main thread has changed it.
    """

    def __init__(self) -> None:
        global _holds
        with _lock:
            _set()
            _holds += 1
        self._open = True

    def release(self) -> None:
        """End the hold (a second call does nothing)."""
        global _holds
        with _lock:
            if not self._open:
                return
            self._open = False
            _holds -= 1
            _restore_if_unused()

    def __enter__(self) -> BlasHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_single_threaded_blas() -> BlasHold:
    """Keep numpy's BLAS on one thread until the hold is released: a loaded model holds it for
    its life, the server for its own (see :class:`BlasHold`)."""
    return BlasHold()


def restore_blas_threads() -> None:
    """Give numpy's BLAS back the process's own thread count after concurrent predictions kept it
    on one thread (blocks and holds still open keep the limit until they end)."""
    global _pinned
    with _lock:
        _pinned = False
        _restore_if_unused()


def blas_limited() -> bool:
    """Whether samdeploy currently keeps numpy's BLAS on one thread."""
    return _limiter is not None
