"""Profiling: per-node run counts and times for any run, printable as a table."""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeStats:
    """Times of one node over a run, in milliseconds."""

    node: str
    count: int
    total_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted, non-empty list."""
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


class Profile:
    """Collects node times. Pass one to ``Graph.run`` / ``Graph.stream``; reuse it to accumulate.

    Every sample is kept (8 bytes each) so percentiles are exact; call :meth:`clear` between
    measurements of very long streams.
    """

    def __init__(self) -> None:
        self._samples: dict[str, array] = {}
        self._lock = threading.Lock()
        self.wall_s = 0.0
        self.items = 0

    def record(self, node: str, seconds: float) -> None:
        """Add one run of ``node`` that took ``seconds``; safe from any thread."""
        with self._lock:
            samples = self._samples.get(node)
            if samples is None:
                samples = self._samples[node] = array("d")
            samples.append(seconds)

    def record_wall(self, seconds: float, items: int) -> None:
        """Add the wall time of a whole run of ``items`` items."""
        with self._lock:
            self.wall_s += seconds
            self.items += items

    def clear(self) -> None:
        with self._lock:
            self._samples.clear()
            self.wall_s = 0.0
            self.items = 0

    def stats(self) -> list[NodeStats]:
        """One :class:`NodeStats` per node, in the order the nodes first ran."""
        with self._lock:
            samples = {name: sorted(values) for name, values in self._samples.items()}
        result = []
        for name, ordered in samples.items():
            total = sum(ordered)
            result.append(
                NodeStats(
                    node=name,
                    count=len(ordered),
                    total_ms=total * 1e3,
                    mean_ms=total / len(ordered) * 1e3,
                    p50_ms=_percentile(ordered, 0.50) * 1e3,
                    p95_ms=_percentile(ordered, 0.95) * 1e3,
                )
            )
        return result

    def __getitem__(self, node: str) -> NodeStats:
        for stats in self.stats():
            if stats.node == node:
                return stats
        raise KeyError(node)

    def table(self) -> str:
        """A plain-text table: node, count, total, mean, p50, p95 (ms), then the wall time."""
        header = ("node", "count", "total ms", "mean ms", "p50 ms", "p95 ms")
        rows = [
            (
                s.node,
                str(s.count),
                f"{s.total_ms:.3f}",
                f"{s.mean_ms:.3f}",
                f"{s.p50_ms:.3f}",
                f"{s.p95_ms:.3f}",
            )
            for s in self.stats()
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row: tuple[str, ...]) -> str:
            cells = [row[0].ljust(widths[0])] + [
                cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True)
            ]
            return "  ".join(cells).rstrip()

        lines = [line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in rows]
        if self.items:
            per_item = self.wall_s / self.items * 1e3
            lines.append(f"wall: {self.wall_s * 1e3:.3f} ms for {self.items} item(s), {per_item:.3f} ms/item")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
