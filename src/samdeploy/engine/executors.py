"""Executors: how a compiled graph runs. Chosen by name: ``sequential``, ``task``, ``pipeline``.

- ``sequential`` runs the nodes one after another in topological order, in the caller's thread.
- ``task`` runs each item's nodes on a thread pool: a node starts as soon as its inputs are ready,
  so independent branches run at once (real concurrency where nodes release the GIL, as ONNX
  Runtime and numpy do).
- ``pipeline`` gives every node a worker thread; items flow through bounded queues, so node
  ``k`` works on item ``i`` while node ``k+1`` works on item ``i-1``. Nested graphs are inlined
  when a graph is compiled, so each of their nodes is a stage of its own.

Every executor runs one item (:meth:`Executor.run`, raising :class:`NodeError`) or a stream of
items (:meth:`Executor.stream`, yielding :class:`ItemResult` in input order, a failed item
carrying its error while the others go on).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from samdeploy.engine.graph import Plan, Step
from samdeploy.engine.profile import Profile
from samdeploy.errors import GraphError, NodeError

THREAD_PREFIX = "samdeploy"  # every thread an executor starts is named "samdeploy-..."


@dataclass
class ItemResult:
    """The outcome of one item of a stream: its outputs, or the error of the node that failed."""

    index: int
    outputs: dict[str, Any] | None
    error: NodeError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _bad_output(step: Step, out: Any) -> Exception:
    wanted = ", ".join(port for port, _ in step.outputs)
    got = f"keys {', '.join(map(str, out))}" if isinstance(out, Mapping) else type(out).__name__
    return RuntimeError(f"run() must return a dict with output ports {wanted}; it returned {got}")


def run_step(step: Step, values: list[Any], profile: Profile | None, index: int | None) -> None:
    """Run one node on one item's slots: read its inputs, call ``run``, store its outputs."""
    node = step.node
    kwargs = {port: values[slot] for port, slot in step.inputs}
    try:
        # The node lock keeps the promise that run() is never called from two threads at once,
        # even when callers run the same graph from several threads.
        if profile is None:
            with node._lock:
                out = node.run(**kwargs)
        else:
            start = time.perf_counter()
            with node._lock:
                out = node.run(**kwargs)
            profile.record(step.name, time.perf_counter() - start)
    except Exception as exc:
        raise NodeError(step.name, index, exc) from exc
    try:
        for port, slot in step.outputs:
            values[slot] = out[port]
    except (KeyError, TypeError, IndexError):
        cause = _bad_output(step, out)
        raise NodeError(step.name, index, cause) from None


def setup_plan(plan: Plan) -> None:
    """Set up every node of a plan (once per node); failures name the node."""
    for step in plan.steps:
        if step.node._ready:
            continue
        try:
            step.node.ensure_setup()
        except Exception as exc:
            raise NodeError(step.name, None, exc) from exc


class Executor:
    """Base class: runs a :class:`Plan` item by item. Subclasses implement :meth:`_run_item`
    (one item) and may override :meth:`stream`.

    Use an executor as a context manager (or call :meth:`close`) to stop its threads; an instance
    can be passed to ``Graph.run`` / ``Graph.stream`` to reuse its threads across calls.
    """

    name: ClassVar[str] = ""

    def run(self, plan: Plan, inputs: Mapping[str, Any], profile: Profile | None = None) -> dict[str, Any]:
        """Run one item; raise :class:`NodeError` if a node fails."""
        start = time.perf_counter()
        out = self._run_item(plan, inputs, profile, None)
        if profile is not None:
            profile.record_wall(time.perf_counter() - start, 1)
        return out

    def stream(
        self, plan: Plan, items: Iterable[Mapping[str, Any]], profile: Profile | None = None
    ) -> Iterator[ItemResult]:
        """Run items one at a time with :meth:`run`, yielding results in order."""
        setup_plan(plan)  # a node that cannot set up fails the stream, not each item
        for index, inputs in enumerate(items):
            start = time.perf_counter()
            try:
                result = ItemResult(index, self._run_item(plan, inputs, profile, index))
            except NodeError as exc:
                result = ItemResult(index, None, exc)
            except GraphError as exc:
                result = ItemResult(index, None, NodeError(plan.name, index, exc))
            if profile is not None:
                profile.record_wall(time.perf_counter() - start, 1)
            yield result

    def _run_item(self, plan: Plan, inputs: Mapping[str, Any], profile: Profile | None, index: int) -> dict:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the executor's threads, if any."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Runs the nodes in topological order in the caller's thread."""

    name = "sequential"

    def _run_item(
        self, plan: Plan, inputs: Mapping[str, Any], profile: Profile | None, index: int | None
    ) -> dict[str, Any]:
        values = plan.bind(inputs)
        setup_plan(plan)
        for step in plan.steps:
            run_step(step, values, profile, index)
        return plan.collect(values)


class TaskExecutor(Executor):
    """Runs each item's nodes on a thread pool as soon as their inputs are ready.

    A worker that finishes a node continues with one of the nodes it made ready and hands the
    others to the pool; the calling thread is one of the workers. A chain of nodes therefore
    costs no thread switches. ``workers`` defaults to
    the number of CPUs plus four (nodes often wait on native code that releases the GIL).
    """

    name = "task"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise GraphError(f"task executor needs at least one worker, got {workers}")
        self.workers = workers or (os.cpu_count() or 1) + 4
        self._pool: ThreadPoolExecutor | None = None

    def _run_item(
        self, plan: Plan, inputs: Mapping[str, Any], profile: Profile | None, index: int | None
    ) -> dict[str, Any]:
        values = plan.bind(inputs)
        setup_plan(plan)
        if not plan.steps:
            return plan.collect(values)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{THREAD_PREFIX}-task")
        pool = self._pool
        waiting = [len(d) for d in plan.deps]
        cond = threading.Condition()
        active = 0
        errors: list[BaseException] = []

        def start(i: int) -> None:  # called with cond held
            nonlocal active
            active += 1
            pool.submit(work, i)

        def work(i: int) -> None:
            nonlocal active
            current: int | None = i
            try:
                while current is not None:
                    run_step(plan.steps[current], values, profile, index)
                    with cond:
                        ready = []
                        for nxt in plan.successors[current]:
                            waiting[nxt] -= 1
                            if waiting[nxt] == 0:
                                ready.append(nxt)
                        if errors or not ready:
                            current = None
                        else:
                            for nxt in ready[1:]:
                                start(nxt)
                            current = ready[0]
            except BaseException as exc:
                with cond:
                    errors.append(exc)
            finally:
                with cond:
                    active -= 1
                    cond.notify_all()

        # The caller works too: it runs one root (and the chain after it) itself, so a graph
        # without parallel branches runs without a single thread switch.
        roots = [i for i, deps in enumerate(plan.deps) if not deps]
        with cond:
            for i in roots[1:]:
                start(i)
            active += 1
        work(roots[0])
        with cond:
            try:
                cond.wait_for(lambda: active == 0)
            except BaseException as exc:  # KeyboardInterrupt: stop scheduling, let running nodes end
                errors.append(exc)
                cond.wait_for(lambda: active == 0)
                raise
        if errors:
            raise errors[0]
        return plan.collect(values)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Item:
    """One item travelling down the pipeline."""

    __slots__ = ("index", "values", "error")

    def __init__(self, index: int, values: list[Any] | None, error: NodeError | None) -> None:
        self.index = index
        self.values = values
        self.error = error


_END = object()  # marks the end of the stream in every queue
_POLL_S = 0.05  # how often a blocked worker checks whether the stream was stopped


class _Stopped(Exception):
    """Raised inside the pipeline when the stream is being torn down."""


def _put(q: queue.Queue, obj: Any, stop: threading.Event) -> None:
    while True:
        try:
            q.put(obj, timeout=_POLL_S)
            return
        except queue.Full:
            if stop.is_set():
                raise _Stopped from None


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                raise _Stopped from None


class PipelineExecutor(Executor):
    """Every node is a worker thread; items flow through bounded queues, results come out in order.

    Stages are the plan's nodes in topological order, joined by queues of ``queue_depth`` items
    (one queue in front of every stage and one after the last). A full queue blocks the stage
    before it (backpressure), so at most ``max_in_flight(stages)`` items are read from the input
    and not yet yielded, however long the stream. The stream's threads start on the first
    ``next()`` and are joined when the stream ends, is closed, or the consumer raises.
    """

    name = "pipeline"

    def __init__(self, queue_depth: int = 4) -> None:
        if queue_depth < 1:
            raise GraphError(f"pipeline queue_depth must be at least 1, got {queue_depth}")
        self.queue_depth = queue_depth

    def max_in_flight(self, stages: int) -> int:
        """Upper bound of items taken from the input but not yet yielded."""
        return (stages + 1) * self.queue_depth + stages

    def run(self, plan: Plan, inputs: Mapping[str, Any], profile: Profile | None = None) -> dict[str, Any]:
        with contextlib.closing(self.stream(plan, [inputs], profile)) as results:
            result = next(results)
        if result.error is not None:
            cause = result.error.cause
            if isinstance(cause, GraphError) and result.error.node == plan.name:
                raise cause
            raise NodeError(result.error.node, None, cause) from cause
        return result.outputs  # type: ignore[return-value]

    def stream(
        self, plan: Plan, items: Iterable[Mapping[str, Any]], profile: Profile | None = None
    ) -> Iterator[ItemResult]:
        setup_plan(plan)
        source = iter(items)
        depth = self.queue_depth
        queues: list[queue.Queue] = [queue.Queue(depth) for _ in range(len(plan.steps) + 1)]
        stop = threading.Event()
        failures: list[BaseException] = []
        threads = [
            threading.Thread(
                target=self._stage,
                args=(step, plan.releases[k], queues[k], queues[k + 1], stop, failures, profile),
                name=f"{THREAD_PREFIX}-pipeline-{step.name}",
                daemon=True,
            )
            for k, step in enumerate(plan.steps)
        ]
        head, tail = queues[0], queues[-1]
        started = time.perf_counter()
        count = 0
        try:
            for thread in threads:
                thread.start()
            exhausted = ended = False
            while True:
                # Feed the pipeline as far as its first queue allows, without blocking: this thread
                # must also drain the last queue, and only this thread puts into the first one.
                while not ended and not head.full():
                    if exhausted:
                        head.put_nowait(_END)
                        ended = True
                        break
                    try:
                        inputs = next(source)
                    except StopIteration:
                        exhausted = True
                        continue
                    try:
                        head.put_nowait(_Item(count, plan.bind(inputs), None))
                    except GraphError as exc:
                        head.put_nowait(_Item(count, None, NodeError(plan.name, count, exc)))
                    count += 1
                if failures:
                    raise failures[0]
                try:
                    item = tail.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                outputs = plan.collect(item.values) if item.error is None else None
                yield ItemResult(item.index, outputs, item.error)
        finally:
            stop.set()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            if profile is not None:
                profile.record_wall(time.perf_counter() - started, count)

    @staticmethod
    def _stage(
        step: Step,
        releases: tuple[int, ...],
        inbox: queue.Queue,
        outbox: queue.Queue,
        stop: threading.Event,
        failures: list[BaseException],
        profile: Profile | None,
    ) -> None:
        try:
            while True:
                item = _get(inbox, stop)
                if item is not _END and item.error is None:
                    values = item.values
                    try:
                        run_step(step, values, profile, item.index)
                    except NodeError as exc:
                        item.error = exc
                        item.values = None
                    else:
                        for slot in releases:
                            values[slot] = None
                _put(outbox, item, stop)
                if item is _END:
                    return
        except _Stopped:
            return
        except BaseException as exc:  # a bug in the engine itself: stop the stream, tell the consumer
            failures.append(exc)
            stop.set()


SEQUENTIAL = SequentialExecutor()  # stateless, so one instance serves every caller

EXECUTORS: dict[str, type[Executor]] = {
    cls.name: cls for cls in (SequentialExecutor, TaskExecutor, PipelineExecutor)
}


def make_executor(name: str, **options: Any) -> Executor:
    """An executor by name; ``options`` go to its constructor (``workers``, ``queue_depth``)."""
    cls = EXECUTORS.get(name)
    if cls is None:
        raise GraphError(f"unknown executor '{name}'; choose one of {', '.join(EXECUTORS)}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise GraphError(f"executor '{name}': bad option: {exc}") from None


@contextlib.contextmanager
def executing(executor: str | Executor, **options: Any) -> Iterator[Executor]:
    """The named executor, closed on exit; an :class:`Executor` instance is used as is and left open."""
    if isinstance(executor, Executor):
        if options:
            raise GraphError(f"options {', '.join(options)} cannot be given with an Executor instance")
        yield executor
        return
    ex = make_executor(executor, **options)
    try:
        yield ex
    finally:
        ex.close()
