"""Server-side sampling of `/api/health/metrics` during a load, and trend fitting.

`ServerSampler` is an asyncio task that polls the metrics route every `interval_s` with its own
timeout, so a hanging server costs one failed sample per interval and never blocks the load.
`trend()` fits a slope to a series (Theil-Sen with a Kendall tau p-value by default, ordinary least
squares on request) to answer "is memory growing steadily?".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from scipy import stats as sps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

__all__ = ["ServerSample", "ServerSampler", "ServerTrace", "Trend", "trend"]

METRICS_PATH = "/api/health/metrics"


@dataclass(frozen=True)
class ServerSample:
    """One poll of the metrics route; `ok` False means it failed (`error` says how)."""

    t_s: float
    ok: bool
    memory_usage: float | None = None
    memory_percent: float | None = None
    cpu_usage: float | None = None
    connection_failures: float | None = None
    requests_total: float | None = None
    requests_errors: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "t_s": self.t_s,
            "ok": self.ok,
            "memory_usage": self.memory_usage,
            "memory_percent": self.memory_percent,
            "cpu_usage": self.cpu_usage,
            "connection_failures": self.connection_failures,
            "requests_total": self.requests_total,
            "requests_errors": self.requests_errors,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerSample:
        """Inverse of `to_json()`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class Trend:
    """A fitted slope: units of the series per second, with its p-value against slope 0."""

    method: str
    slope_per_s: float
    intercept: float
    p_value: float
    n: int
    span_s: float
    mean: float

    @property
    def relative_growth(self) -> float:
        """Fitted growth over the observed span as a fraction of the mean level."""
        if self.mean == 0 or math.isnan(self.slope_per_s):
            return 0.0
        return self.slope_per_s * self.span_s / abs(self.mean)

    def steady_growth(self, *, alpha: float = 0.01, min_relative: float = 0.05) -> bool:
        """True when the series grows significantly (p < alpha) by more than `min_relative`."""
        return (
            self.n >= 3
            and self.slope_per_s > 0
            and self.p_value < alpha
            and self.relative_growth > min_relative
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "method": self.method,
            "slope_per_s": self.slope_per_s,
            "intercept": self.intercept,
            "p_value": self.p_value,
            "n": self.n,
            "span_s": self.span_s,
            "mean": self.mean,
            "relative_growth": self.relative_growth,
        }


def trend(times: Sequence[float], values: Sequence[float], method: str = "theilsen") -> Trend:
    """Fit a slope to (time, value) points.

    Theil-Sen (median of pairwise slopes) is the default because memory series have GC and
    allocation spikes that would drag a least-squares line; its p-value comes from Kendall's tau,
    the rank test it is built on. `method="linregress"` gives OLS with its t-test p-value.
    Fewer than 3 points give slope NaN and p-value 1.
    """
    if len(times) != len(values):
        raise ValueError("times and values differ in length")
    n = len(values)
    mean = float(sum(values) / n) if n else 0.0
    span = float(max(times) - min(times)) if n else 0.0
    if n < 3 or span <= 0 or len(set(values)) == 1:
        slope = 0.0 if n >= 3 and span > 0 else math.nan
        return Trend(method, slope, mean, 1.0, n, span, mean)
    if method == "linregress":
        fit = sps.linregress(times, values)
        return Trend(
            method, float(fit.slope), float(fit.intercept), float(fit.pvalue), n, span, mean
        )
    if method == "theilsen":
        ts = sps.theilslopes(values, times)
        tau = sps.kendalltau(times, values)
        p = float(tau.pvalue) if not math.isnan(tau.pvalue) else 1.0
        return Trend(method, float(ts.slope), float(ts.intercept), p, n, span, mean)
    raise ValueError(f"unknown trend method {method!r}; use 'theilsen' or 'linregress'")


@dataclass(frozen=True)
class ServerTrace:
    """The samples of one run, in time order."""

    samples: tuple[ServerSample, ...]
    interval_s: float

    def series(self, name: str) -> tuple[list[float], list[float]]:
        """(times, values) of one numeric field over the successful samples that have it."""
        times, values = [], []
        for s in self.samples:
            value = getattr(s, name)
            if s.ok and value is not None:
                times.append(s.t_s)
                values.append(float(value))
        return times, values

    def trend(self, name: str = "memory_usage", method: str = "theilsen") -> Trend:
        """`trend()` of one field."""
        return trend(*self.series(name), method=method)

    @property
    def failed(self) -> int:
        """Number of polls that failed."""
        return sum(1 for s in self.samples if not s.ok)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {"interval_s": self.interval_s, "samples": [s.to_json() for s in self.samples]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServerTrace:
        """Inverse of `to_json()`."""
        return cls(
            samples=tuple(ServerSample.from_json(s) for s in data["samples"]),
            interval_s=float(data["interval_s"]),
        )


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_metrics(t_s: float, body: object) -> ServerSample:
    """Turn a `/api/health/metrics` body into a sample (missing fields stay None)."""
    metrics = body.get("metrics") if isinstance(body, dict) else None
    if not isinstance(metrics, dict):
        return ServerSample(t_s, ok=False, error="body has no 'metrics' object")
    db = metrics.get("database") if isinstance(metrics.get("database"), dict) else {}
    req = metrics.get("requests") if isinstance(metrics.get("requests"), dict) else {}
    assert isinstance(db, dict)
    assert isinstance(req, dict)
    return ServerSample(
        t_s,
        ok=True,
        memory_usage=_num(metrics.get("memory_usage")),
        memory_percent=_num(metrics.get("memory_percent")),
        cpu_usage=_num(metrics.get("cpu_usage")),
        connection_failures=_num(db.get("connection_failures")),
        requests_total=_num(req.get("total")),
        requests_errors=_num(req.get("errors")),
    )


class ServerSampler:
    """Poll the metrics route every `interval_s` in a background asyncio task.

    Use as `async with ServerSampler(client) as sampler: ...`; the task stops on exit (at most one
    request timeout later). Failed polls are recorded as samples with `ok=False`, never raised.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        interval_s: float = 1.0,
        timeout_s: float = 2.0,
        path: str = METRICS_PATH,
        max_samples: int = 100_000,
    ) -> None:
        self.client = client
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.path = path
        self.max_samples = max_samples
        self._samples: list[ServerSample] = []
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    async def sample_once(self) -> ServerSample:
        """One poll, with a hard timeout; failures become `ok=False` samples."""
        t = time.monotonic() - self._t0
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the inner call completes, and stop() then waited forever.
            async with asyncio.timeout(self.timeout_s + 0.5):
                resp = await self.client.get(self.path, timeout=self.timeout_s)
            if resp.status_code != 200:
                return ServerSample(t, ok=False, error=f"HTTP {resp.status_code}")
            return parse_metrics(t, resp.json())
        except (httpx.TimeoutException, TimeoutError):
            return ServerSample(t, ok=False, error=f"no answer within {self.timeout_s:g} s")
        except ValueError:
            return ServerSample(t, ok=False, error="the answer was not JSON")
        except httpx.HTTPError as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
            return ServerSample(t, ok=False, error=(reason or "the request failed")[:200])

    async def _loop(self) -> None:
        next_at = time.monotonic()
        while len(self._samples) < self.max_samples:
            self._samples.append(await self.sample_once())
            # Fixed-rate schedule: a slow poll shortens the next wait instead of shifting all later
            # samples, so the series stays evenly spaced for the trend fit.
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        """Start polling (idempotent)."""
        if self._task is None:
            self._t0 = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> ServerTrace:
        """Stop polling and return the trace."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            # Bounded: a poll in flight ends within its own timeout; never wait longer than that.
            await asyncio.wait({task}, timeout=self.timeout_s + 1.0)
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.result()
        return self.trace()

    def trace(self) -> ServerTrace:
        """The samples so far."""
        return ServerTrace(samples=tuple(self._samples), interval_s=self.interval_s)

    async def __aenter__(self) -> ServerSampler:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
