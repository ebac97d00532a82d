"""The watch's live view for Prometheus: `etlverify watch --prometheus-port PORT`.

This module owns the ``/metrics`` endpoint of a running watch and nothing else: the watch calls
`WatchExporter.observe` with a `WatchSnapshot` after each window, and whatever Prometheus scrapes
next is that snapshot. It neither measures nor judges (``measure/`` and ``baseline/`` do); it only
publishes what the watch already decided, so Prometheus and Grafana chart the same figures the watch
reports (`WatchSnapshot.of_window` only reads a window's record and its trigger states). The
dashboard for these series is ``ops/grafana/etlverify-watch.json``.

Every series is a gauge labelled ``watch`` (the watch id):

==========================================  ========================================================
``etlverify_watch_elapsed_seconds``         time watched so far
``etlverify_watch_planned_seconds``         the ``--for`` duration
``etlverify_watch_windows``                 windows recorded so far
``etlverify_watch_target_up``               1 if the last health probe answered, else 0
``etlverify_watch_latency_ms``              ``quantile`` = p50, p95; ``series`` = current, baseline
``etlverify_watch_error_rate_percent``      ``series`` = current, baseline
``etlverify_watch_memory_percent``          the target's last memory sample
``etlverify_watch_db_failures_per_minute``  database connection failures per minute
``etlverify_watch_trigger_fired``           ``trigger`` = name: 1 fired, 0 clear, NaN unknown
``etlverify_watch_notifications_failed``    notifications that could not be delivered
``etlverify_watch_source_available``        ``source`` = prometheus, counters, log, probes: 1 when
                                            it gave figures for the last window, else 0
``etlverify_watch_source_requests``         ``source``: requests it counted in the last window
``etlverify_watch_source_errors``           ``source``: errors (log: error lines) in that window
``etlverify_watch_source_error_rate_percent``  ``source``: errors in percent of its requests
``etlverify_watch_source_latency_ms``       ``source``, ``quantile``: its latency figure
``etlverify_watch_trigger_source``          ``trigger``, ``source``: 1 for the source that decided
                                            the trigger in the last window
==========================================  ========================================================

The ``source_*`` series are the users' signals of the watch (``watch/sources.py``), each source's
own figures, whether or not it decided a trigger; the older ``latency_ms`` and
``error_rate_percent`` series stay the watch's own health probes.

A figure the watch does not have (None, or not a finite number) is not exported at all: the series
disappears, and Prometheus marks it stale, rather than charting a 0 that was never measured. A
trigger that cannot be judged (``UNKNOWN``) is different: it stays as NaN, so a dashboard shows
"unknown" instead of losing the row (an unjudged trigger is fail-closed, not silent), while an
alert rule ``etlverify_watch_trigger_fired == 1`` does not match it.

Each scrape reads one snapshot, whole: the server builds the response from the one tuple of samples
`observe` last stored (a single reference assignment), so a scrape never mixes two windows.
"""

from __future__ import annotations

import errno
import math
import socket
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import GaugeMetricFamily

from etlverify.errors import EtlVerifyError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from prometheus_client.metrics_core import Metric

    from etlverify.baseline.triggers import TriggerResult
    from etlverify.measure.results import MetricResult

__all__ = ["METRICS", "ExporterError", "SourceFigures", "WatchExporter", "WatchSnapshot"]

#: Every metric the exporter can publish, name -> help text. The Grafana dashboard's test checks
#: that its queries use only these names.
METRICS: Mapping[str, str] = {
    "etlverify_watch_elapsed_seconds": "Time watched so far, in seconds.",
    "etlverify_watch_planned_seconds": "Planned length of the watch (--for), in seconds.",
    "etlverify_watch_windows": "Measurement windows recorded so far.",
    "etlverify_watch_target_up": "1 if the target's last health probe answered, else 0.",
    "etlverify_watch_latency_ms": (
        "Response time of the last window (series=current) and of the baseline (series=baseline), "
        "in milliseconds, per quantile."
    ),
    "etlverify_watch_error_rate_percent": (
        "Error rate of the last window (series=current) and of the baseline (series=baseline), "
        "in percent."
    ),
    "etlverify_watch_memory_percent": "The target's memory use at the last sample, in percent.",
    "etlverify_watch_db_failures_per_minute": "Database connection failures per minute.",
    "etlverify_watch_trigger_fired": (
        "Rollback trigger state: 1 fired, 0 clear, NaN unknown (could not be judged)."
    ),
    "etlverify_watch_notifications_failed": "Notifications that could not be delivered.",
    "etlverify_watch_source_available": (
        "1 if the source (prometheus, counters, log, probes) gave figures for the last window."
    ),
    "etlverify_watch_source_requests": "Requests the source counted in the last window.",
    "etlverify_watch_source_errors": (
        "Errors the source counted in the last window (the log: error lines)."
    ),
    "etlverify_watch_source_error_rate_percent": (
        "Errors in percent of the source's requests in the last window."
    ),
    "etlverify_watch_source_latency_ms": (
        "The source's latency figure for the last window, in milliseconds, per quantile."
    ),
    "etlverify_watch_trigger_source": "1 for the source that decided the trigger.",
}

_TRIGGER_VALUES: Mapping[str, float] = {"FIRED": 1.0, "CLEAR": 0.0, "UNKNOWN": math.nan}
_JOIN_TIMEOUT_S = 5.0

# (metric name, ((label name, label value), ...), value): one exported sample.
_Sample = tuple[str, tuple[tuple[str, str], ...], float]


class ExporterError(EtlVerifyError):
    """The exporter could not start; the message is one line naming the option, e.g.
    ``--prometheus-port 9100: address already in use``."""


@dataclass(frozen=True)
class SourceFigures:
    """One users' signal's figures for the last window (None: it has no such figure)."""

    available: bool
    requests: float | None = None
    errors: float | None = None
    error_rate_pct: float | None = None
    latency_ms: float | None = None
    quantile: str = "p50"


@dataclass(frozen=True)
class WatchSnapshot:
    """What the watch knows after a window: the figures `WatchExporter.observe` publishes."""

    watch_id: str
    elapsed_s: float
    planned_s: float
    windows: int  # windows recorded so far
    target_up: bool  # last health probe answered
    latency_ms: Mapping[str, float]  # keys "p50", "p95" of the last window (missing = no data)
    baseline_latency_ms: Mapping[str, float]  # same keys, the baseline's (empty until known)
    error_rate_pct: float | None  # last window
    baseline_error_rate_pct: float | None
    memory_pct: float | None  # last server sample
    db_failures_per_min: float | None
    triggers: Mapping[str, str]  # trigger name -> "CLEAR" | "FIRED" | "UNKNOWN"
    notifications_failed: int
    sources: Mapping[str, SourceFigures] = field(default_factory=dict)  # source name -> figures
    decided_by: Mapping[str, str] = field(default_factory=dict)  # trigger name -> source name

    @classmethod
    def of_window(
        cls,
        record: Mapping[str, Any],
        triggers: Sequence[TriggerResult],
        *,
        watch_id: str,
        elapsed_s: float,
        planned_s: float,
        windows: int,
        target_up: bool,
        baseline_health: MetricResult | None,
        notifications_failed: int,
    ) -> WatchSnapshot:
        """The snapshot of a window that just ended (its record, JSON) and its trigger states."""
        from etlverify.watch.probe import HEALTH_METRIC
        from etlverify.watch.sources import SOURCE_LABELS, SourceWindow

        health = (record.get("metrics") or {}).get(HEALTH_METRIC) or {}
        count, errors = int(health.get("count") or 0), int(health.get("errors") or 0)
        mem = [s.get("memory_percent") for s in record.get("server") or []]
        mem_v = [float(m) for m in mem if isinstance(m, int | float)]
        db = [t for t in triggers if t.name == "database_connection_failures"]
        latency = {
            k: float(health[f"{k}_ms"]) for k in ("p50", "p95") if health.get(f"{k}_ms") is not None
        }
        base_latency: dict[str, float] = {}
        base_rate: float | None = None
        if baseline_health is not None:
            merged = baseline_health.merged
            base_latency = {
                k: float(v)
                for k, v in (("p50", merged.p50_ms), ("p95", merged.p95_ms))
                if v is not None
            }
            base_rate = merged.error_rate_pct
        figures = {}
        for name, data in (record.get("sources") or {}).items():
            sw = SourceWindow.from_json(data)
            figures[name] = (
                SourceFigures(
                    available=True,
                    requests=sw.requests,
                    errors=sw.errors,
                    error_rate_pct=sw.error_rate_pct,
                    latency_ms=sw.latency_ms,
                    quantile=sw.quantile,
                )
                if sw.available
                else SourceFigures(available=False, quantile=sw.quantile)
            )
        by_label = {label: name for name, label in SOURCE_LABELS.items()}
        return cls(
            watch_id=watch_id,
            elapsed_s=elapsed_s,
            planned_s=planned_s,
            windows=windows,
            target_up=target_up,
            latency_ms=latency,
            baseline_latency_ms=base_latency,
            error_rate_pct=100.0 * errors / (count + errors) if count + errors else None,
            baseline_error_rate_pct=base_rate,
            memory_pct=mem_v[-1] if mem_v else None,
            db_failures_per_min=db[0].value if db and db[0].value is not None else None,
            triggers={t.name: t.state.value for t in triggers},
            notifications_failed=notifications_failed,
            sources=figures,
            decided_by={
                t.name: by_label.get(t.decided_by, t.decided_by) for t in triggers if t.decided_by
            },
        )


def _finite(value: float | None) -> float | None:
    """The value as a float, or None where there is no figure to chart (None, NaN, infinity)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _samples(snap: WatchSnapshot) -> tuple[_Sample, ...]:
    """The snapshot as samples; figures the watch does not have are left out."""
    watch = ("watch", snap.watch_id)
    out: list[_Sample] = []

    def add(name: str, value: float | None, *labels: tuple[str, str]) -> None:
        number = _finite(value)
        if number is not None:
            out.append((name, (watch, *labels), number))

    add("etlverify_watch_elapsed_seconds", snap.elapsed_s)
    add("etlverify_watch_planned_seconds", snap.planned_s)
    add("etlverify_watch_windows", snap.windows)
    add("etlverify_watch_target_up", 1.0 if snap.target_up else 0.0)
    for series, latencies in (("current", snap.latency_ms), ("baseline", snap.baseline_latency_ms)):
        for quantile in sorted(latencies):
            add(
                "etlverify_watch_latency_ms",
                latencies[quantile],
                ("quantile", quantile),
                ("series", series),
            )
    add("etlverify_watch_error_rate_percent", snap.error_rate_pct, ("series", "current"))
    add("etlverify_watch_error_rate_percent", snap.baseline_error_rate_pct, ("series", "baseline"))
    add("etlverify_watch_memory_percent", snap.memory_pct)
    add("etlverify_watch_db_failures_per_minute", snap.db_failures_per_min)
    for trigger in sorted(snap.triggers):
        state = snap.triggers[trigger].upper()
        # A state this exporter does not know is as good as unknown: shown, never read as clear.
        value = _TRIGGER_VALUES.get(state, math.nan)
        out.append(("etlverify_watch_trigger_fired", (watch, ("trigger", trigger)), value))
    add("etlverify_watch_notifications_failed", snap.notifications_failed)
    for name in sorted(snap.sources):
        fig, src = snap.sources[name], ("source", name)
        add("etlverify_watch_source_available", 1.0 if fig.available else 0.0, src)
        add("etlverify_watch_source_requests", fig.requests, src)
        add("etlverify_watch_source_errors", fig.errors, src)
        add("etlverify_watch_source_error_rate_percent", fig.error_rate_pct, src)
        add("etlverify_watch_source_latency_ms", fig.latency_ms, ("quantile", fig.quantile), src)
    for trigger in sorted(snap.decided_by):
        add(
            "etlverify_watch_trigger_source",
            1.0,
            ("source", snap.decided_by[trigger]),
            ("trigger", trigger),
        )
    return tuple(out)


class _SnapshotCollector:
    """A custom collector (prometheus_client's pattern for exporters): each scrape yields the
    samples of the last snapshot, so a series the snapshot lacks is simply not there."""

    def __init__(self) -> None:
        self.samples: tuple[_Sample, ...] = ()

    def describe(self) -> Iterator[Metric]:
        """The metric names, so the registry can refuse a collector that would clash."""
        for name, help_text in METRICS.items():
            yield GaugeMetricFamily(name, help_text, labels=())

    def collect(self) -> Iterator[Metric]:
        samples = self.samples  # one read: the scrape sees one snapshot
        families: dict[str, GaugeMetricFamily] = {}
        for name, labels, value in samples:
            family = families.get(name)
            if family is None:
                family = GaugeMetricFamily(name, METRICS[name], labels=[k for k, _ in labels])
                families[name] = family
            family.add_metric([v for _, v in labels], value)
        yield from families.values()


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: Prometheus scrapes every few seconds for hours."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class _Server(ThreadingWSGIServer):
    """prometheus_client's threading WSGI server, without a traceback on stderr when a scraper
    drops its connection mid-request, and never sharing its port with another process."""

    allow_reuse_port = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper that went away is its own problem; the watch goes on. Nothing to tell anyone.
        return


class WatchExporter:
    """``/metrics`` for a running watch, on ``host:port``, in a daemon thread.

    It has its own `CollectorRegistry`, so it exports the watch's series and nothing else (no
    process or GC metrics of the watcher itself), and two exporters in one process do not clash.
    Port 0 picks a free port; `url` gives the one chosen.
    """

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._port = port
        self._host = host
        self._collector = _SnapshotCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen and serve in a daemon thread; a second call does nothing.

        Raises `ExporterError` (one line) when the port cannot be had.
        """
        if self._server is not None:
            return
        try:
            family = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]
        except (OSError, UnicodeError) as exc:
            raise ExporterError(
                f"--prometheus-port {self._port}: cannot resolve host {self._host!r} ({exc})"
            ) from None

        class _FamilyServer(_Server):
            address_family = family

        try:
            server = make_server(
                self._host,
                self._port,
                make_wsgi_app(self.registry),
                server_class=_FamilyServer,
                handler_class=_QuietHandler,
            )
        except OverflowError:
            raise ExporterError(
                f"--prometheus-port {self._port}: expected a port from 0 to 65535"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            elif exc.errno == errno.EACCES:
                reason = "permission denied (ports below 1024 need privileges)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                reason = f"cannot listen on {self._host} (not an address of this host)"
            else:
                reason = exc.strerror or "cannot listen there"
            raise ExporterError(f"--prometheus-port {self._port}: {reason}") from None
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"etlverify-watch-exporter:{server.server_port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread

    def observe(self, snap: WatchSnapshot) -> None:
        """Publish this snapshot: the next scrape returns exactly its figures."""
        self._collector.samples = _samples(snap)

    def stop(self) -> None:
        """Stop serving and free the port; safe to call more than once, or before `start`."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=_JOIN_TIMEOUT_S)

    @property
    def port(self) -> int:
        """The port listened on (the one chosen, after `start` with port 0)."""
        return self._server.server_port if self._server is not None else self._port

    @property
    def url(self) -> str:
        """Where Prometheus scrapes, e.g. ``http://127.0.0.1:9100/metrics``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"
