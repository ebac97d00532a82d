"""Frozen, JSON-serialisable result objects: window statistics, per-metric results, whole runs.

Everything here converts to plain JSON (`to_json()`) and back (`from_json()`), so that a run can be
stored as a baseline, written into a report, or compared later. Latencies are stored in milliseconds
for people reading the file; the encoded histogram (microseconds) is the exact record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etlverify.measure.histogram import STANDARD_PERCENTILES, LatencyHistogram, decode_histogram
from etlverify.measure.sampler import ServerTrace

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "LATENCY_STATS",
    "LoadParameters",
    "MetricResult",
    "RunResult",
    "WindowStats",
    "merge_windows",
    "parse_stat",
    "stat_value",
]

#: Named statistics besides `p<q>` percentiles. Latency statistics are in milliseconds,
#: throughput in successful requests per second, error_rate in percent of attempts.
LATENCY_STATS = ("mean", "max", "min")
OTHER_STATS = ("throughput", "error_rate")
_PCT_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?|100)$")


def _ms(value_us: float) -> float | None:
    return None if math.isnan(value_us) else round(value_us / 1000.0, 6)


def parse_stat(stat: str) -> float | str:
    """`p95` -> 95.0, `p99.9` -> 99.9; named statistics return their name; else ValueError."""
    match = _PCT_RE.match(stat)
    if match:
        q = float(match.group(1))
        if 0.0 < q <= 100.0:
            return q
        raise ValueError(f"percentile out of range (0, 100]: {stat!r}")
    if stat in LATENCY_STATS or stat in OTHER_STATS:
        return stat
    raise ValueError(f"unknown statistic {stat!r}")


def is_latency_stat(stat: str) -> bool:
    """True for percentiles and mean/max/min (milliseconds, higher is worse)."""
    return stat not in OTHER_STATS


@dataclass(frozen=True)
class WindowStats:
    """One trial window of one metric: counts, percentiles (ms) and the encoded histogram."""

    index: int
    start_s: float
    duration_s: float
    count: int
    errors: int
    late: int
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    histogram: str
    error_kinds: Mapping[str, int] = field(default_factory=dict)
    #: Which recorded run of a baseline this window came from (0 for a single run).
    run: int = 0

    @classmethod
    def from_histogram(
        cls,
        hist: LatencyHistogram,
        *,
        index: int,
        start_s: float,
        duration_s: float,
        errors: Mapping[str, int] | None = None,
        late: int = 0,
        run: int = 0,
    ) -> WindowStats:
        """Summarise a histogram plus its error tally into a window."""
        pcts = hist.percentiles_us(STANDARD_PERCENTILES)
        kinds = dict(sorted((errors or {}).items()))
        return cls(
            index=index,
            start_s=round(start_s, 6),
            duration_s=round(duration_s, 6),
            count=hist.count,
            errors=sum(kinds.values()),
            late=late,
            p50_ms=_ms(pcts[50.0]),
            p90_ms=_ms(pcts[90.0]),
            p95_ms=_ms(pcts[95.0]),
            p99_ms=_ms(pcts[99.0]),
            max_ms=_ms(hist.max_us),
            mean_ms=_ms(hist.mean_us),
            histogram=hist.encode(),
            error_kinds=kinds,
            run=run,
        )

    def decoded(self) -> LatencyHistogram:
        """The window's histogram (a private copy)."""
        return decode_histogram(self.histogram)

    @property
    def attempts(self) -> int:
        """Successful plus failed samples."""
        return self.count + self.errors

    @property
    def throughput_rps(self) -> float:
        """Successful samples per second of window duration."""
        return self.count / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_rate_pct(self) -> float:
        """Failed samples in percent of attempts (0 when nothing was attempted)."""
        return 100.0 * self.errors / self.attempts if self.attempts else 0.0

    def value(self, stat: str) -> float | None:
        """The value of a statistic (`p95`, `mean`, `throughput`, ...); None when undefined."""
        return stat_value(self, stat)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "index": self.index,
            "run": self.run,
            "start_s": self.start_s,
            "duration_s": self.duration_s,
            "count": self.count,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "late": self.late,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "throughput_rps": round(self.throughput_rps, 6),
            "histogram": self.histogram,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WindowStats:
        """Inverse of `to_json()`; KeyError/TypeError/ValueError on malformed data."""

        def opt(key: str) -> float | None:
            value = data[key]
            return None if value is None else float(value)

        return cls(
            index=int(data["index"]),
            run=int(data.get("run", 0)),
            start_s=float(data["start_s"]),
            duration_s=float(data["duration_s"]),
            count=int(data["count"]),
            errors=int(data["errors"]),
            error_kinds={str(k): int(v) for k, v in dict(data.get("error_kinds", {})).items()},
            late=int(data.get("late", 0)),
            p50_ms=opt("p50_ms"),
            p90_ms=opt("p90_ms"),
            p95_ms=opt("p95_ms"),
            p99_ms=opt("p99_ms"),
            max_ms=opt("max_ms"),
            mean_ms=opt("mean_ms"),
            histogram=str(data["histogram"]),
        )


_STORED = {"p50": "p50_ms", "p90": "p90_ms", "p95": "p95_ms", "p99": "p99_ms"}


def stat_value(window: WindowStats, stat: str) -> float | None:
    """A statistic of a window: latency stats in ms, throughput in rps, error_rate in percent."""
    if stat == "throughput":
        return window.throughput_rps
    if stat == "error_rate":
        return window.error_rate_pct if window.attempts else None
    if window.count == 0:
        return None
    if stat in _STORED:
        value: float | None = getattr(window, _STORED[stat])
        return value
    if stat == "max":
        return window.max_ms
    if stat == "mean":
        return window.mean_ms
    hist = window.decoded()
    if stat == "min":
        return _ms(hist.min_us)
    q = parse_stat(stat)
    assert isinstance(q, float)
    return _ms(hist.percentile_us(q))


def merge_windows(windows: Iterable[WindowStats], *, index: int = -1) -> WindowStats:
    """Pool windows into one: histograms added, counts and durations summed.

    Durations add up because pooled windows are successive (or from different runs), so the pooled
    throughput is the mean throughput over all observed time.
    """
    hist = LatencyHistogram()
    kinds: dict[str, int] = {}
    duration = 0.0
    late = 0
    start = math.inf
    for win in windows:
        hist.add(win.decoded())
        for kind, n in win.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
        if win.errors and not win.error_kinds:
            kinds["error"] = kinds.get("error", 0) + win.errors
        duration += win.duration_s
        late += win.late
        start = min(start, win.start_s)
    return WindowStats.from_histogram(
        hist,
        index=index,
        start_s=0.0 if math.isinf(start) else start,
        duration_s=duration,
        errors=kinds,
        late=late,
    )


@dataclass(frozen=True)
class MetricResult:
    """All trial windows of one metric (a route such as `GET /api/jobs`, or `ws push cancelled`)."""

    name: str
    windows: tuple[WindowStats, ...]

    @property
    def merged(self) -> WindowStats:
        """All windows pooled."""
        return merge_windows(self.windows)

    @property
    def count(self) -> int:
        """Successful samples over all windows."""
        return sum(w.count for w in self.windows)

    @property
    def errors(self) -> int:
        """Failed samples over all windows."""
        return sum(w.errors for w in self.windows)

    def values(self, stat: str) -> list[float]:
        """The statistic per window, skipping windows where it is undefined."""
        out = []
        for win in self.windows:
            value = stat_value(win, stat)
            if value is not None:
                out.append(value)
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (the name is the key of the enclosing mapping)."""
        return {"windows": [w.to_json() for w in self.windows]}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> MetricResult:
        """Inverse of `to_json()`."""
        return cls(name=name, windows=tuple(WindowStats.from_json(w) for w in data["windows"]))


@dataclass(frozen=True)
class LoadParameters:
    """How the load was shaped; part of a baseline's environment fingerprint."""

    model: str  # "open" or "closed"
    duration_s: float
    windows: int
    rate_rps: float | None = None
    poisson: bool = False
    max_concurrency: int | None = None
    users: int | None = None
    think_time_s: float | None = None
    max_requests: int | None = None
    timeout_s: float | None = None
    identities: int = 0
    routes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "model": self.model,
            "duration_s": self.duration_s,
            "windows": self.windows,
            "rate_rps": self.rate_rps,
            "poisson": self.poisson,
            "max_concurrency": self.max_concurrency,
            "users": self.users,
            "think_time_s": self.think_time_s,
            "max_requests": self.max_requests,
            "timeout_s": self.timeout_s,
            "identities": self.identities,
            "routes": list(self.routes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoadParameters:
        """Inverse of `to_json()`."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["routes"] = tuple(known.get("routes", ()))
        return cls(**known)


@dataclass(frozen=True)
class RunResult:
    """One measured run: per-metric windows plus run-level accounting.

    `late` counts requests sent after their intended time (their latency still counts from the
    intended time); `unsent` counts requests whose intended time came but that could not be sent
    before the hard deadline (they are also errors of kind `unsent`). `longest_outage_s` is the
    longest stretch in which requests were attempted and none succeeded.
    """

    metrics: Mapping[str, MetricResult]
    load: LoadParameters
    started_at: str
    duration_s: float
    late: int = 0
    unsent: int = 0
    longest_outage_s: float = 0.0
    server: ServerTrace | None = None
    #: why the run stopped before its end (the target was known to be down), else ""
    stopped: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (``stopped`` only when the run stopped early)."""
        data: dict[str, Any] = {
            "metrics": {name: self.metrics[name].to_json() for name in sorted(self.metrics)},
            "load": self.load.to_json(),
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "late": self.late,
            "unsent": self.unsent,
            "longest_outage_s": self.longest_outage_s,
            "server": None if self.server is None else self.server.to_json(),
        }
        if self.stopped:
            data["stopped"] = self.stopped
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        """Inverse of `to_json()`."""
        server = data.get("server")
        return cls(
            metrics={
                name: MetricResult.from_json(name, m) for name, m in dict(data["metrics"]).items()
            },
            load=LoadParameters.from_json(data["load"]),
            started_at=str(data["started_at"]),
            duration_s=float(data["duration_s"]),
            late=int(data.get("late", 0)),
            unsent=int(data.get("unsent", 0)),
            longest_outage_s=float(data.get("longest_outage_s", 0.0)),
            server=None if server is None else ServerTrace.from_json(server),
            stopped=str(data.get("stopped") or ""),
        )


def longest_outage(events: Sequence[tuple[float, float, bool]], end_s: float) -> float:
    """Longest span with attempts but no success.

    `events` are (intended send offset, completion offset, ok). An outage starts at the intended
    send of the first failure after the last success and ends at the completion of the next success
    (or at `end_s` when none follows).
    """
    longest = 0.0
    outage_start: float | None = None
    for sent, done, ok in sorted(events, key=lambda e: e[1]):
        if ok:
            if outage_start is not None:
                longest = max(longest, done - outage_start)
                outage_start = None
        elif outage_start is None:
            outage_start = sent
    if outage_start is not None:
        longest = max(longest, end_s - outage_start)
    return round(longest, 6)
