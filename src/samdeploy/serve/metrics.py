"""Prometheus metrics on a registry private to one app (two apps in one process never collide).

Counters and histograms are updated as requests run; the cache, queue and job figures are read
live at scrape time by :class:`LiveCollector`, so they can never drift from the real state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class LiveFigures:
    """What :class:`LiveCollector` reports, read at scrape time."""

    cache_bytes: int
    cache_entries: int
    cache_hits: int
    cache_misses: int
    encode_queue: int
    jobs_active: int


class LiveCollector(Collector):
    """Reads the cache and queue state when Prometheus scrapes."""

    def __init__(self, read: Callable[[], LiveFigures]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        figures = self._read()
        for family, name, documentation, value in (
            (GaugeMetricFamily, "cache_bytes", "Bytes held by the embedding cache", figures.cache_bytes),
            (GaugeMetricFamily, "cache_images", "Images whose embedding is cached", figures.cache_entries),
            (
                CounterMetricFamily,
                "cache_hits",
                "Embedding cache lookups that found the image",
                figures.cache_hits,
            ),
            (
                CounterMetricFamily,
                "cache_misses",
                "Embedding cache lookups that missed",
                figures.cache_misses,
            ),
            (
                GaugeMetricFamily,
                "encode_queue",
                "Encodes running or waiting for a worker",
                figures.encode_queue,
            ),
            (
                GaugeMetricFamily,
                "jobs_active",
                "Segment-everything jobs queued or running",
                figures.jobs_active,
            ),
        ):
            yield family(f"samdeploy_{name}", documentation, value=value)


class Metrics:
    """The app's metrics: requests by route and status, latency, encoder and decoder time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "samdeploy_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "samdeploy_request_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_seconds = Histogram(
            "samdeploy_encode_seconds",
            "Time to decode an upload and run the image encoder",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.segments_alone = Counter(
            "samdeploy_segments_alone",
            "Segment requests that had the server to themselves (decoded on --solo-threads)",
            registry=self.registry,
        )
        self.decode_seconds = Histogram(
            "samdeploy_decode_seconds",
            "Time of one mask decoder call (a prompt batch)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, read: Callable[[], LiveFigures]) -> None:
        """Report the live figures ``read`` returns at every scrape."""
        self.registry.register(LiveCollector(read))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
