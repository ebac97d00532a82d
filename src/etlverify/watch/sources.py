"""What users experienced, per window, from the signals a watch can read.

This module owns the *measurement* of users' signals; `signals` chooses among them and judges.
Four sources, in order of trust (`SOURCE_ORDER`):

- ``prometheus``: PromQL over the Prometheus HTTP API (``--metrics prometheus=URL``): request
  rate, error ratio and a latency quantile over the window (`PromQueries`, overridable in the
  ``--analysis`` TOML file). A query that fails makes the source unavailable for that window, with
  one line saying why; it never stops the watch;
- ``counters``: the target's own cumulative counters (``metrics.requests.{total,errors}`` of
  ``GET /api/health/metrics``, sampled by the watch) as per-window deltas. A counter that goes
  down is a restart: the new value is the increment (never a negative rate) and the window says so;
- ``log``: ERROR/CRITICAL/FATAL lines of the deployment's log per window (errors only, no
  request count);
- ``probes``: the watch's own requests (health probes, the synthetic job).

Each source gives a `SourceWindow` per window, stored in the window's record under ``sources``
(so a resumed watch and a ``--baseline`` file carry them). The server counters include the watch's
own requests (about 0.27 a second at the defaults; `SourceWindow.watch_requests` says how many).
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx

from etlverify.errors import EtlVerifyError
from etlverify.measure.histogram import LatencyHistogram
from etlverify.measure.results import MetricResult, WindowStats

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

__all__ = [
    "DEFAULT_QUERIES",
    "SOURCE_LABELS",
    "SOURCE_ORDER",
    "AnalysisError",
    "PromQueries",
    "PrometheusSource",
    "SourceWindow",
    "counter_window",
    "load_analysis",
    "log_window",
    "measure_sources",
    "parse_metrics_option",
    "probes_window",
    "source_metric",
    "source_windows",
]

#: most trusted first: a metrics system, the target's counters, its log, the watch's own probes
SOURCE_ORDER = ("prometheus", "counters", "log", "probes")
SOURCE_LABELS: Mapping[str, str] = {
    "prometheus": "Prometheus",
    "counters": "server counters",
    "log": "the deployment's log",
    "probes": "watch probes",
}
#: quantiles a latency query may compute: the ones a window stores (`WindowStats.p50_ms`, ...)
QUANTILES: Mapping[float, str] = {0.5: "p50", 0.9: "p90", 0.95: "p95", 0.99: "p99"}


class AnalysisError(EtlVerifyError):
    """A bad ``--metrics`` value or ``--analysis`` file; one line naming where."""


@dataclass(frozen=True)
class SourceWindow:
    """One source's figures for one window; `available` False with `note` saying why."""

    source: str
    available: bool
    span_s: float = 0.0  # the seconds the figures cover
    requests: int | None = None
    errors: int | None = None
    latency_ms: float | None = None
    quantile: str = "p50"
    restarts: int = 0  # counters that went down (a restart) within the window
    #: what `errors` counts (counters): "5xx" (the target tells server errors apart) or
    #: "4xx+5xx" (the contract's `requests.errors`, every status >= 400)
    error_kind: str | None = None
    watch_requests: int | None = None  # of `requests`, the watch's own (counters)
    note: str | None = None

    @property
    def error_rate_pct(self) -> float | None:
        """Errors in percent of requests (None without a request count or with none)."""
        if self.requests is None or self.errors is None or self.requests <= 0:
            return None
        return 100.0 * self.errors / self.requests

    def has_errors(self) -> bool:
        """True when this window can judge an error rate (or, for the log, an error count)."""
        if not self.available or self.errors is None:
            return False
        return self.source == "log" or (self.requests is not None and self.requests > 0)

    def has_latency(self) -> bool:
        """True when this window has a latency figure."""
        return self.available and self.latency_ms is not None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (stored in the window record)."""
        rate = self.error_rate_pct
        return {
            "source": self.source,
            "available": self.available,
            "span_s": round(self.span_s, 3),
            "requests": self.requests,
            "errors": self.errors,
            "error_rate_pct": None if rate is None else round(rate, 4),
            "latency_ms": self.latency_ms,
            "quantile": self.quantile,
            "restarts": self.restarts,
            "error_kind": self.error_kind,
            "watch_requests": self.watch_requests,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SourceWindow:
        """Inverse of `to_json()` (derived fields ignored)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# -- the target's request counters ---------------------------------------------------------------


def _counter_points(
    samples: Sequence[Mapping[str, Any]], key: str
) -> list[tuple[float, float, float]]:
    points = []
    for s in samples:
        total, errors = s.get("requests_total"), s.get(key)
        if s.get("ok") and isinstance(total, int | float) and isinstance(errors, int | float):
            points.append((float(s.get("t_s") or 0.0), float(total), float(errors)))
    return points


def counter_window(
    previous: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    *,
    watch_requests: int | None = None,
) -> SourceWindow:
    """The request-counter deltas of a window from its server samples (JSON form).

    `previous` are the samples of the window just before (empty after a gap or at the start): the
    window's delta runs from the last of them to the last of its own, so consecutive windows
    neither overlap nor miss a request. A counter lower than the one before is a restart: the new
    value is what was counted since, and `restarts` says it happened.

    Errors are the target's 5xx count (`requests_server_errors`) when every sample has one, as
    Prometheus's default query counts 5xx: a client's 404s or 429s (or a test suite's deliberate
    bad requests) are not the deployment failing. Else the contract's `requests.errors`.
    """
    key = "requests_errors"
    answered = [s for s in [*previous, *samples] if s.get("ok")]
    if answered and all(isinstance(s.get("requests_server_errors"), int | float) for s in answered):
        key = "requests_server_errors"
    mine = _counter_points(samples, key)
    if not mine:
        answered = [s for s in samples if s.get("ok")]
        if answered:
            note = "the target exports no request counters (no 'requests' in /api/health/metrics)"
        elif samples:
            note = "no metrics sample answered in this window"
        else:
            note = "no metrics sample in this window"
        return SourceWindow("counters", available=False, note=note)
    before = _counter_points(previous, key)
    points = before[-1:] + mine
    if len(points) < 2:
        return SourceWindow(
            "counters", available=False, note="one counter sample so far: no delta yet"
        )
    requests = errors = 0.0
    restarts = 0
    for (_, n0, e0), (_, n1, e1) in itertools.pairwise(points):
        if n1 < n0 or e1 < e0:
            restarts += 1
            requests, errors = requests + n1, errors + e1
        else:
            requests, errors = requests + n1 - n0, errors + e1 - e0
    restart_note = None
    if restarts:
        restart_note = (
            f"the request counters went down {restarts} time(s) (the target restarted): "
            "counted from the restart"
        )
    return SourceWindow(
        "counters",
        available=True,
        span_s=points[-1][0] - points[0][0],
        requests=int(requests),
        errors=int(errors),
        restarts=restarts,
        error_kind="5xx" if key == "requests_server_errors" else "4xx+5xx",
        watch_requests=watch_requests,
        note=restart_note,
    )


# -- the watch's own probes and the log --------------------------------------------------------


def probes_window(
    metrics: Mapping[str, Any], duration_s: float, latency_metric: str
) -> SourceWindow:
    """The watch's own requests of a window (every watch metric), latency from `latency_metric`."""
    requests = errors = 0
    for data in metrics.values():
        requests += int(data.get("count") or 0) + int(data.get("errors") or 0)
        errors += int(data.get("errors") or 0)
    p50 = (metrics.get(latency_metric) or {}).get("p50_ms")
    return SourceWindow(
        "probes",
        available=requests > 0,
        span_s=duration_s,
        requests=requests,
        errors=errors,
        latency_ms=float(p50) if isinstance(p50, int | float) else None,
        note=None if requests else "no probe was made in this window",
    )


def log_window(available: bool, lines: int, duration_s: float, why: str | None) -> SourceWindow:
    """The log's error lines of a window (`why` says why the log cannot be read)."""
    if not available:
        return SourceWindow("log", available=False, note=why)
    return SourceWindow("log", available=True, span_s=duration_s, errors=lines)


def measure_sources(
    record: Mapping[str, Any],
    *,
    previous_server: Sequence[Mapping[str, Any]],
    prometheus: PrometheusSource | None,
    log_folder: Path | None,
    watch_requests: int,
) -> dict[str, dict[str, Any]]:
    """Every source's figures for a window that just closed (its record, JSON), by source name:
    Prometheus queried now over the window's length, the counters from the record's server
    samples (and `previous_server`, the window before's), the log's lines, the probes."""
    from etlverify.watch.probe import HEALTH_METRIC

    duration = float(record["duration_s"])
    found: list[SourceWindow] = []
    if prometheus is not None:
        found.append(prometheus.window(duration))
    found.append(counter_window(previous_server, record["server"], watch_requests=watch_requests))
    if log_folder is not None:
        readable = log_folder.is_dir()
        why = None if readable else f"no log folder {log_folder}"
        found.append(log_window(readable, int(record.get("log_errors") or 0), duration, why))
    found.append(probes_window(record["metrics"], duration, HEALTH_METRIC))
    return {sw.source: sw.to_json() for sw in found}


# -- Prometheus --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromQueries:
    """PromQL for the users' request rate (per second), error ratio (0-1) and a latency quantile
    (seconds). ``$window`` becomes the window's length (``60s``), ``$quantile`` the quantile."""

    request_rate: str
    error_ratio: str
    latency: str
    quantile: float = 0.5

    @property
    def label(self) -> str:
        """The quantile as a statistic name (``p50``)."""
        return QUANTILES[self.quantile]


_TOTAL = '{__name__=~".+_requests_total"}'
_FIVEXX = '{__name__=~".+_requests_total",code=~"5.."}'
_BUCKETS = '{__name__=~".+_request_duration_seconds_bucket"}'
#: for a conventional `*_requests_total{code}` counter and `*_request_duration_seconds` histogram;
#: `or vector(0)`: before the first 5xx there is no 5xx series at all, which is 0%, not "no data"
DEFAULT_QUERIES = PromQueries(
    request_rate=f"sum(rate({_TOTAL}[$window]))",
    error_ratio=f"(sum(rate({_FIVEXX}[$window])) or vector(0)) / sum(rate({_TOTAL}[$window]))",
    latency=f"histogram_quantile($quantile, sum by (le) (rate({_BUCKETS}[$window])))",
)

_ANALYSIS_KEYS = ("prometheus",)
_PROM_KEYS = ("request_rate", "error_ratio", "latency", "quantile")


def _unknown(key: str, known: Sequence[str], where: str) -> AnalysisError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
    return AnalysisError(f"{where}: unknown key {key!r}{hint}")


def load_analysis(path: Path | None) -> PromQueries:
    """The queries of an ``--analysis`` TOML file (a ``[prometheus]`` table), else the defaults.

    ```toml
    [prometheus]
    request_rate = 'sum(rate(http_requests_total{job="etl"}[$window]))'
    error_ratio = '...'      # 0-1
    latency = '...'          # seconds
    quantile = 0.95          # 0.5 (default), 0.9, 0.95 or 0.99
    ```
    """
    if path is None:
        return DEFAULT_QUERIES
    where = f"--analysis {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnalysisError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AnalysisError(f"{where}: invalid TOML: {exc}") from None
    for key in data:
        if key not in _ANALYSIS_KEYS:
            raise _unknown(key, _ANALYSIS_KEYS, where)
    prom = data.get("prometheus", {})
    if not isinstance(prom, dict):
        raise AnalysisError(f"{where}: [prometheus] must be a table")
    for key in prom:
        if key not in _PROM_KEYS:
            raise _unknown(key, _PROM_KEYS, f"{where}: [prometheus]")
    texts: dict[str, str] = {}
    for key in ("request_rate", "error_ratio", "latency"):
        if key in prom:
            value = prom[key]
            if not isinstance(value, str) or not value.strip():
                raise AnalysisError(f"{where}: [prometheus] {key}: expected a PromQL string")
            texts[key] = value.strip()
    queries = PromQueries(
        request_rate=texts.get("request_rate", DEFAULT_QUERIES.request_rate),
        error_ratio=texts.get("error_ratio", DEFAULT_QUERIES.error_ratio),
        latency=texts.get("latency", DEFAULT_QUERIES.latency),
    )
    if "quantile" in prom:
        q = prom["quantile"]
        if isinstance(q, bool) or not isinstance(q, int | float) or float(q) not in QUANTILES:
            raise AnalysisError(
                f"{where}: [prometheus] quantile: expected one of "
                f"{', '.join(f'{k:g}' for k in QUANTILES)}, got {q!r}"
            )
        queries = replace(queries, quantile=float(q))
    return queries


def parse_metrics_option(values: Sequence[str]) -> str | None:
    """The Prometheus URL of ``--metrics prometheus=URL`` (None when not given)."""
    url: str | None = None
    for value in values:
        kind, sep, rest = value.partition("=")
        if not sep or kind.strip().lower() != "prometheus":
            raise AnalysisError(f"--metrics: expected prometheus=URL, got {value!r}")
        rest = rest.strip().rstrip("/")
        if not rest.startswith(("http://", "https://")):
            raise AnalysisError(
                f"--metrics prometheus=URL: expected a URL starting with http:// or https://, "
                f"got {rest!r}"
            )
        if url is not None and url != rest:
            raise AnalysisError("--metrics: give one prometheus=URL")
        url = rest
    return url


def _range(seconds: float) -> str:
    """A PromQL duration for a window (whole milliseconds)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class _QueryError(Exception):
    """One query failed; the message is one line for people."""


class PrometheusSource:
    """Instant queries against ``URL/api/v1/query``, with a timeout on every request."""

    def __init__(
        self,
        url: str,
        queries: PromQueries = DEFAULT_QUERIES,
        *,
        timeout_s: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.queries = queries
        self.timeout_s = timeout_s
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout_s, trust_env=False, transport=transport
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()

    def _render(self, promql: str, window_s: float) -> str:
        return promql.replace("$window", _range(window_s)).replace(
            "$quantile", f"{self.queries.quantile:g}"
        )

    def query(self, what: str, promql: str, window_s: float) -> float | None:
        """One instant query's single value (None: no series, or NaN); `_QueryError` else."""
        text = self._render(promql, window_s)
        try:
            resp = self._http.get("/api/v1/query", params={"query": text})
        except httpx.TimeoutException:
            raise _QueryError(
                f"{what} query: Prometheus at {self.url} did not answer within {self.timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else "connection failed"
            raise _QueryError(
                f"{what} query: cannot reach Prometheus at {self.url}: {reason}"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            raise _QueryError(
                f"{what} query: {self.url} answered HTTP {resp.status_code} without JSON "
                "(is it a Prometheus server?)"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise _QueryError(
                f"{what} query: Prometheus answered HTTP {resp.status_code}: "
                f"{str(error or 'no result').splitlines()[0][:200]}"
            )
        data = body.get("data") or {}
        kind, result = data.get("resultType"), data.get("result")
        raw: Any
        if kind == "scalar" and isinstance(result, list) and len(result) == 2:
            raw = result[1]
        elif kind == "vector" and isinstance(result, list):
            if not result:
                return None
            if len(result) > 1:
                raise _QueryError(
                    f"{what} query returned {len(result)} series, expected one "
                    "(aggregate it, e.g. with sum(...))"
                )
            raw = (result[0].get("value") or [None, None])[1]
        else:
            raise _QueryError(f"{what} query returned a {kind}, expected one value (a vector)")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise _QueryError(f"{what} query returned {raw!r}, not a number") from None
        return value if math.isfinite(value) else None

    def window(self, window_s: float) -> SourceWindow:
        """The figures of the window that just ended (its last `window_s` seconds)."""
        q = self.queries
        try:
            rate = self.query("request_rate", q.request_rate, window_s)
            ratio = self.query("error_ratio", q.error_ratio, window_s)
            latency_s = self.query("latency", q.latency, window_s)
        except _QueryError as exc:
            return SourceWindow("prometheus", available=False, note=str(exc), quantile=q.label)
        if rate is None:
            return SourceWindow(
                "prometheus",
                available=False,
                quantile=q.label,
                note="request_rate query returned no series (does Prometheus scrape the target? "
                "do the queries fit its metric names? see --analysis)",
            )
        requests = round(rate * window_s)
        errors = round(min(1.0, max(0.0, ratio)) * requests) if ratio is not None else None
        if errors is None and requests > 0:
            note: str | None = "error_ratio query returned no value"
        else:
            note = None
        return SourceWindow(
            "prometheus",
            available=True,
            span_s=window_s,
            requests=requests,
            errors=errors if errors is not None else (0 if requests == 0 else None),
            latency_ms=None if latency_s is None else round(latency_s * 1000.0, 4),
            quantile=q.label,
            note=note,
        )

    def check(self) -> str | None:
        """One trial of every query over a minute: None when Prometheus answers, else why."""
        q = self.queries
        try:
            for what, promql in (
                ("request_rate", q.request_rate),
                ("error_ratio", q.error_ratio),
                ("latency", q.latency),
            ):
                self.query(what, promql, 60.0)
        except _QueryError as exc:
            return str(exc)
        return None


# -- as metrics for the trigger rules ----------------------------------------------------------

_EMPTY_HISTOGRAM: list[str] = []


def _empty_histogram() -> str:
    if not _EMPTY_HISTOGRAM:
        _EMPTY_HISTOGRAM.append(LatencyHistogram().encode())
    return _EMPTY_HISTOGRAM[0]


def source_windows(windows: Sequence[Mapping[str, Any]]) -> dict[str, list[SourceWindow]]:
    """Each source's stored windows (`record["sources"]`), in window order."""
    out: dict[str, list[SourceWindow]] = {}
    for w in windows:
        for name, data in (w.get("sources") or {}).items():
            if isinstance(data, dict):
                try:
                    out.setdefault(name, []).append(SourceWindow.from_json(data))
                except TypeError:
                    continue
    return out


def source_metric(
    name: str, windows: Sequence[SourceWindow], *, with_histograms: bool = False
) -> MetricResult:
    """A source's windows as one metric, so the gate's rules judge it unchanged: successes and
    errors per window, the latency figure in its quantile's slot. The trigger rules read only
    those; `with_histograms` also gives each window a histogram of its successes (all at its
    latency figure, or 0 without one), for the comparisons that pool windows (`compare_metrics`,
    on the error rate only)."""
    stats = []
    for i, sw in enumerate(windows):
        requests, errors = int(sw.requests or 0), int(sw.errors or 0)
        histogram = _empty_histogram()
        if with_histograms and requests > errors:
            hist = LatencyHistogram()
            hist.record_us(1000.0 * (sw.latency_ms or 0.0), requests - errors)
            histogram = hist.encode()
        slots: dict[str, float | None] = dict.fromkeys(("p50", "p90", "p95", "p99"))
        if sw.latency_ms is not None:
            slots[sw.quantile] = float(sw.latency_ms)
        stats.append(
            WindowStats(
                index=i,
                start_s=0.0,
                duration_s=sw.span_s,
                count=max(0, requests - errors),
                errors=errors,
                late=0,
                max_ms=None,
                mean_ms=None,
                histogram=histogram,
                p50_ms=slots["p50"],
                p90_ms=slots["p90"],
                p95_ms=slots["p95"],
                p99_ms=slots["p99"],
            )
        )
    return MetricResult(name, tuple(stats))
