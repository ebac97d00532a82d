"""The Prometheus exposition of the reference, `GET /metrics`: what a real ETL Plus would export.

A registry of the app's own (never prometheus_client's process-global one, so two apps in one
process, or the suite's own exporter, never mix), rendered in the text format 0.0.4:

- `etlplus_http_requests_total{method, route, code}` (counter): every answered HTTP request,
  including those the gateway answers itself (injected faults, 413, 429, 401), so a watch sees
  what users saw. `route` is the route TEMPLATE (`/api/jobs/{job_id}`), `unmatched` for a path
  no route knows, so cardinality stays bounded; a method outside the standard ones is `other`.
  `/metrics` does not count itself.
- `etlplus_http_request_duration_seconds{method, route}` (histogram, 1 ms .. 10 s): from the
  gateway's entry to the end of the answer, injected latency included.
- `etlplus_ws_messages_sent_total` (counter) and `etlplus_ws_connections` (gauge): read from the
  WebSocket hub at scrape time, the numbers of `/api/health/metrics`.
- `etlplus_ws_push_delay_seconds` (histogram): from a push's publish to its frame handed to the
  connection, per delivered push (queueing and injected WebSocket delays included).
- the standard `process_*` metrics (CPU seconds, resident memory, open fds) of this process.

Counting is plain dictionary arithmetic on the event loop's thread (a bisect for the bucket), read
by a collector at scrape time. Measured in-process, it adds about 1.3 us to the health route's
~14 us; prometheus_client's own Counter and Histogram (a lock per increment) added about 3 us.
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from etlplus_reference.wshub import Hub

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS", "METRICS_PATH", "UNMATCHED", "Exporter"]

#: the route of the exposition (outside `/api/`, like any Prometheus target's)
METRICS_PATH = "/metrics"
#: `Content-Type` of `GET /metrics`: the text format 0.0.4
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: the `route` label of a request no route matches (a 404 NOT_FOUND)
UNMATCHED = "unmatched"
#: 1 ms .. 10 s in 1-2.5-5 steps: sub-millisecond health calls fall in the first bucket, a hung
#: dependency in +Inf
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: the `le` labels of those buckets, spelt as prometheus_client spells them ("0.001", "10.0")
_LE = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")
#: methods kept as they are in the `method` label; any other is `other` (bounded cardinality)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class _HubCollector(Collector):
    """The hub's own counters, read at scrape time (nothing added to the push path)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "etlplus_ws_messages_sent",
            "WebSocket messages sent since start.",
            value=self.hub.messages_sent,
        )
        yield GaugeMetricFamily(
            "etlplus_ws_connections",
            "Open WebSocket connections.",
            value=len(self.hub.connections),
        )


class _RequestCollector(Collector):
    """HTTP requests by (method, route, code) and their durations by (method, route).

    Updated only on the event loop's thread, and read there by the scrape: no locks needed.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        #: (method, route) -> [per-bucket counts (not cumulative) ..., +Inf count, sum of seconds]
        self.durations: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        cells = self.durations.get((method, route))
        if cells is None:
            cells = self.durations[(method, route)] = [0.0] * (len(DURATION_BUCKETS) + 2)
        cells[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1  # le: the first bound >= it
        cells[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "etlplus_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            labels=("method", "route", "code"),
        )
        for (method, route, status), count in self.counts.items():
            requests.add_metric((method, route, str(status)), count)
        yield requests
        duration = HistogramMetricFamily(
            "etlplus_http_request_duration_seconds",
            "HTTP request duration in seconds, by method and route template.",
            labels=("method", "route"),
        )
        for labels, cells in self.durations.items():
            cumulative = list(itertools.accumulate(cells[:-1]))
            duration.add_metric(labels, list(zip(_LE, cumulative, strict=True)), cells[-1])
        yield duration


class Exporter:
    """The app's metrics registry and the hooks the gateway and the hub call."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.push_delay = Histogram(
            "etlplus_ws_push_delay_seconds",
            "Delay from a WebSocket push's publish to its send, in seconds.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_HubCollector(hub))
        ProcessCollector(registry=self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request (`route`: its template, or `UNMATCHED`)."""
        self._requests.observe(method if method in _METHODS else "other", route, status, seconds)

    def render(self) -> bytes:
        """The exposition body (text format 0.0.4)."""
        return generate_latest(self.registry)
