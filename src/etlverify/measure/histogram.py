"""HDR latency histograms: one per metric and trial window, mergeable and encodable.

`LatencyHistogram` is a typed wrapper around one `hdrh` histogram (1 us .. 60 s, 3 significant
digits, values in integer microseconds). `LatencyRecorder` keeps one histogram and one error tally
per metric name (a route such as ``GET /api/jobs``) and per trial window, and turns them into the
frozen, JSON-serialisable `MetricResult` objects that baselines store.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from hdrh.histogram import HdrHistogram

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from etlverify.measure.results import MetricResult, WindowStats

__all__ = [
    "HIGHEST_US",
    "LOWEST_US",
    "SIGNIFICANT_DIGITS",
    "LatencyHistogram",
    "LatencyRecorder",
    "decode_histogram",
]

LOWEST_US = 1
HIGHEST_US = 60_000_000
SIGNIFICANT_DIGITS = 3

#: The percentiles every window summary carries (others are read from the encoded histogram).
STANDARD_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lowest, highest and median equivalent value of every counts index (standard layout).

    hdrh computes percentiles and the mean by iterating 17k buckets in Python (~0.1 s each); with
    these tables the same answers come from one numpy cumsum.
    """
    hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
    values = [hdr.get_value_from_index(i) for i in range(hdr.counts_len)]
    lowest = np.array([hdr.get_lowest_equivalent_value(v) for v in values], dtype=np.float64)
    highest = np.array([hdr.get_highest_equivalent_value(v) for v in values], dtype=np.float64)
    median = np.array([hdr._hdr_median_equiv_value(v) for v in values], dtype=np.float64)
    return lowest, highest, median


class LatencyHistogram:
    """One HDR histogram of latencies in microseconds.

    Values above 60 s are clamped to 60 s and counted in `clamped` rather than dropped: a dropped
    value would make a stalled server look faster than it is.
    """

    __slots__ = ("_hdr", "clamped")

    def __init__(self, _hdr: HdrHistogram | None = None) -> None:
        self._hdr: HdrHistogram = (
            _hdr if _hdr is not None else HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        )
        self.clamped = 0

    def record_us(self, value_us: float, count: int = 1) -> None:
        """Record a latency given in microseconds (negative values count as 0)."""
        value = round(value_us)
        if value > HIGHEST_US:
            value = HIGHEST_US
            self.clamped += count
        self._hdr.record_value(max(value, 0), count)

    def record_s(self, value_s: float, count: int = 1) -> None:
        """Record a latency given in seconds."""
        self.record_us(value_s * 1e6, count)

    @property
    def count(self) -> int:
        """Number of recorded values."""
        return int(self._hdr.get_total_count())

    def _counts(self) -> np.ndarray:
        # A view on hdrh's ctypes counts array, no copy.
        return np.ctypeslib.as_array(self._hdr.counts).astype(np.float64)

    def percentile_us(self, q: float) -> float:
        """The value at percentile `q` (0-100) in microseconds; NaN when empty."""
        return self.percentiles_us([q])[q]

    def percentiles_us(self, qs: Iterable[float]) -> dict[float, float]:
        """Several percentiles from one cumulative sum (NaN when empty).

        Same definition as hdrh's `get_value_at_percentile`: the highest equivalent value of the
        first bucket whose cumulative count reaches round(q% of the total), at least 1.
        """
        wanted = list(qs)
        total = self.count
        if total == 0:
            return dict.fromkeys(wanted, math.nan)
        lowest, highest, _ = _tables()
        cum = np.cumsum(self._counts())
        out = {}
        for q in wanted:
            target = max(int(min(q, 100.0) * total / 100 + 0.5), 1)
            idx = min(int(np.searchsorted(cum, target, side="left")), len(cum) - 1)
            out[q] = float(highest[idx] if q else lowest[idx])
        return out

    @property
    def max_us(self) -> float:
        """Largest recorded value (highest equivalent value), NaN when empty."""
        return float(self._hdr.get_max_value()) if self.count else math.nan

    @property
    def min_us(self) -> float:
        """Smallest recorded value, NaN when empty."""
        return float(self._hdr.get_min_value()) if self.count else math.nan

    @property
    def mean_us(self) -> float:
        """Mean of the recorded values (bucket midpoints), NaN when empty."""
        if not self.count:
            return math.nan
        return float(np.dot(self._counts(), _tables()[2]) / self.count)

    def add(self, other: LatencyHistogram) -> None:
        """Merge `other` into this histogram."""
        self._hdr.add(other._hdr)
        self.clamped += other.clamped

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        new = LatencyHistogram()
        new.add(self)
        return new

    def encode(self) -> str:
        """The histogram as a compressed, base64 HdrHistogram V2 string."""
        raw = self._hdr.encode()
        return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)

    @classmethod
    def decode(cls, encoded: str) -> LatencyHistogram:
        """Rebuild a histogram from `encode()` output; ValueError when it is not one."""
        try:
            hdr = HdrHistogram.decode(encoded.encode("ascii"))
        except Exception as exc:  # hdrh raises TypeError, zlib.error, its own cookie errors...
            raise ValueError(f"not an encoded HDR histogram ({type(exc).__name__})") from exc
        # Re-record into the standard layout so that add() between decoded and fresh histograms
        # always takes the fast, same-shape path.
        if (hdr.lowest_trackable_value, hdr.highest_trackable_value, hdr.significant_figures) == (
            LOWEST_US,
            HIGHEST_US,
            SIGNIFICANT_DIGITS,
        ):
            return cls(hdr)
        new = cls()
        new._hdr.add(hdr)
        return new


@lru_cache(maxsize=512)
def _decode_cached(encoded: str) -> LatencyHistogram:
    return LatencyHistogram.decode(encoded)


def decode_histogram(encoded: str) -> LatencyHistogram:
    """Decode an encoded histogram, returning a private copy (decoding is cached)."""
    return _decode_cached(encoded).copy()


class LatencyRecorder:
    """Latency histograms and error tallies per metric name and per trial window.

    A run is split into `windows` trial windows of `window_s` seconds each; a sample is filed under
    the window of its *intended* send time (see `window_of`). Errors are kept apart from latencies:
    a failed request has no meaningful latency, and mixing them would hide failures as fast answers.
    """

    def __init__(self, windows: int = 1, window_s: float = 1.0) -> None:
        if windows < 1:
            raise ValueError(f"windows must be >= 1, got {windows}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.windows = windows
        self.window_s = window_s
        self.durations: list[float] = [window_s] * windows
        self._hist: dict[str, list[LatencyHistogram]] = {}
        self._errors: dict[str, list[Counter[str]]] = {}
        self._late: dict[str, list[int]] = {}

    def window_of(self, offset_s: float) -> int:
        """The window index of a time offset from the run start (clamped to the last window)."""
        # The epsilon keeps an offset of exactly k windows (0.3 / 0.1 = 2.999...) in window k.
        return min(max(math.floor(offset_s / self.window_s + 1e-9), 0), self.windows - 1)

    def _ensure(self, metric: str) -> None:
        if metric not in self._hist:
            self._hist[metric] = [LatencyHistogram() for _ in range(self.windows)]
            self._errors[metric] = [Counter() for _ in range(self.windows)]
            self._late[metric] = [0] * self.windows

    def record(self, metric: str, latency_s: float, *, window: int = 0, late: bool = False) -> None:
        """Record one successful sample of `metric` in `window`; `late` marks a delayed send."""
        self._ensure(metric)
        self._hist[metric][window].record_s(latency_s)
        if late:
            self._late[metric][window] += 1

    def record_error(
        self, metric: str, kind: str = "error", *, window: int = 0, late: bool = False
    ) -> None:
        """Count one failed sample of `metric` (timeout, connection, http_5xx...) in `window`."""
        self._ensure(metric)
        self._errors[metric][window][kind] += 1
        if late:
            self._late[metric][window] += 1

    def touch(self, metric: str) -> None:
        """Declare `metric` so that it appears in results even with no sample."""
        self._ensure(metric)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric names seen so far, sorted."""
        return tuple(sorted(self._hist))

    def histogram(self, metric: str, window: int | None = None) -> LatencyHistogram:
        """A copy of one window's histogram, or of all windows merged when `window` is None."""
        self._ensure(metric)
        if window is not None:
            return self._hist[metric][window].copy()
        merged = LatencyHistogram()
        for hist in self._hist[metric]:
            merged.add(hist)
        return merged

    def errors(self, metric: str, window: int | None = None) -> int:
        """Error count of one window, or of all windows when `window` is None."""
        self._ensure(metric)
        tallies = self._errors[metric] if window is None else [self._errors[metric][window]]
        return sum(sum(c.values()) for c in tallies)

    def add(self, other: LatencyRecorder) -> None:
        """Merge `other` (same window layout, e.g. another worker over the same time) into this."""
        if other.windows != self.windows:
            raise ValueError(f"cannot merge {other.windows} windows into {self.windows}")
        for metric in other._hist:
            self._ensure(metric)
            for i in range(self.windows):
                self._hist[metric][i].add(other._hist[metric][i])
                self._errors[metric][i].update(other._errors[metric][i])
                self._late[metric][i] += other._late[metric][i]
        # Parallel recorders cover the same wall-clock windows, so durations do not add up.
        self.durations = [max(a, b) for a, b in zip(self.durations, other.durations, strict=True)]

    def stats(self, metric: str, window: int, *, start_s: float | None = None) -> WindowStats:
        """The frozen summary of one window of `metric`."""
        from etlverify.measure.results import WindowStats

        self._ensure(metric)
        return WindowStats.from_histogram(
            self._hist[metric][window],
            index=window,
            start_s=window * self.window_s if start_s is None else start_s,
            duration_s=self.durations[window],
            errors=dict(self._errors[metric][window]),
            late=self._late[metric][window],
        )

    def result(self, metric: str) -> MetricResult:
        """All windows of `metric` as a `MetricResult`."""
        from etlverify.measure.results import MetricResult

        return MetricResult(
            name=metric, windows=tuple(self.stats(metric, i) for i in range(self.windows))
        )

    def results(self) -> dict[str, MetricResult]:
        """Every metric's `MetricResult`, keyed by name."""
        return {m: self.result(m) for m in self.metrics}

    def encode(self) -> str:
        """The whole recorder as one base64 string (zlib-compressed JSON of its results), e.g. to
        ship a worker's measurements to a coordinator."""
        payload = {name: res.to_json() for name, res in self.results().items()}
        raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return base64.b64encode(zlib.compress(raw)).decode("ascii")

    @classmethod
    def decode(cls, encoded: str) -> LatencyRecorder:
        """Inverse of `encode()`; ValueError when `encoded` is not one."""
        from etlverify.measure.results import MetricResult

        try:
            payload = json.loads(zlib.decompress(base64.b64decode(encoded, validate=True)))
            results = {n: MetricResult.from_json(n, body) for n, body in payload.items()}
        except (ValueError, TypeError, KeyError, AttributeError, zlib.error) as exc:
            raise ValueError(f"not an encoded LatencyRecorder ({type(exc).__name__})") from exc
        return cls.from_results(results)

    @classmethod
    def from_results(cls, results: Mapping[str, MetricResult]) -> LatencyRecorder:
        """Rebuild a recorder from results (all must have the same number of windows)."""
        counts = {len(r.windows) for r in results.values()}
        if len(counts) > 1:
            raise ValueError(f"results have different window counts: {sorted(counts)}")
        n = counts.pop() if counts else 1
        first = next(iter(results.values()), None)
        durations = [w.duration_s for w in first.windows] if first else [1.0]
        rec = cls(windows=n, window_s=max(durations[0], 1e-9))
        rec.durations = durations
        for name, res in results.items():
            rec._ensure(name)
            for i, win in enumerate(res.windows):
                rec._hist[name][i] = win.decoded()
                rec._errors[name][i] = Counter(win.error_kinds)
                rec._late[name][i] = win.late
        return rec
