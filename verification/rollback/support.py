"""Plain helpers of the rollback suites: the critical rollback triggers as measurable rules.

Each trigger of the checklist ("Critical Rollback Triggers") is a small function over measurements,
so the same rule judges "not firing now" and "detected when induced" (with fault switches).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etlverify.contract import FLAG_BY_COMPONENT, FLAG_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

__all__ = [
    "COMPONENT_FLAGS",
    "FLAG_NAMES",
    "Verdict",
    "db_failure_rate",
    "error_rate_increase",
    "file_sha256",
    "last_line",
    "median",
    "memory_sustained",
    "read_json",
    "response_time_degradation",
    "unavailability",
    "wait_until",
]

#: contract section 11 component -> section 7 flag
COMPONENT_FLAGS = FLAG_BY_COMPONENT

UNAVAILABLE_LIMIT_S = 300.0  # "System crashes or unavailability > 5 minutes"
ERROR_RATE_FACTOR = 3.0  # "Error rate increases > 200% from baseline": above 3x the baseline
ERROR_RATE_FLOOR = 0.01  # a baseline of 0 errors must not turn one error into "infinitely more"
LATENCY_FACTOR = 1.5  # "Response time degradation > 50%"
MEMORY_LIMIT = 95.0  # "Memory usage > 95% sustained"
DB_FAILURES_PER_MIN = 10.0  # "Database connection failures > 10/minute"


@dataclass(frozen=True)
class Verdict:
    """Whether a trigger fires, and the measured value in words."""

    firing: bool
    measured: str


def unavailability(
    samples: Sequence[tuple[float, bool]], limit_s: float = UNAVAILABLE_LIMIT_S
) -> Verdict:
    """(monotonic time, answered ok) probes -> longest outage, firing above the limit."""
    longest = 0.0
    down_since: float | None = None
    failures = 0
    for at, ok in samples:
        if ok:
            if down_since is not None:
                longest = max(longest, at - down_since)
            down_since = None
        else:
            failures += 1
            down_since = at if down_since is None else down_since
    if down_since is not None and samples:
        longest = max(longest, samples[-1][0] - down_since)
    return Verdict(
        longest > limit_s,
        f"{failures} of {len(samples)} probes failed, longest outage {longest:.1f} s "
        f"(limit {limit_s:g} s)",
    )


def error_rate_increase(
    window_errors: int, window_total: int, baseline_rate: float | None
) -> Verdict:
    """Window error rate vs a baseline rate: firing above 3x (a rise of more than 200%)."""
    if window_total <= 0:
        return Verdict(False, "no requests in the window")
    rate = window_errors / window_total
    if baseline_rate is None:
        return Verdict(
            False, f"window error rate {rate:.3f} ({window_errors}/{window_total}), no baseline"
        )
    limit = ERROR_RATE_FACTOR * max(baseline_rate, ERROR_RATE_FLOOR)
    return Verdict(
        rate > limit and window_errors >= 3,
        f"window error rate {rate:.3f} ({window_errors}/{window_total}) vs baseline "
        f"{baseline_rate:.3f} (fires above {limit:.3f})",
    )


def response_time_degradation(now_ms: float, baseline_ms: float) -> Verdict:
    """Median latency now vs a baseline median: firing when more than 50% slower."""
    ratio = now_ms / baseline_ms if baseline_ms > 0 else float("inf")
    return Verdict(
        ratio > LATENCY_FACTOR,
        f"median {now_ms:.1f} ms vs baseline {baseline_ms:.1f} ms "
        f"({(ratio - 1) * 100:+.0f}%, fires above +50%)",
    )


def memory_sustained(samples: Sequence[float], limit: float = MEMORY_LIMIT) -> Verdict:
    """memory_percent samples: firing when every sample of the window is above `limit`."""
    shown = ", ".join(f"{s:.1f}" for s in samples)
    return Verdict(
        bool(samples) and min(samples) > limit,
        f"memory_percent samples [{shown}] (fires when all > {limit:g}%)",
    )


def db_failure_rate(failures_delta: float, window_s: float) -> Verdict:
    """connection_failures counter delta over a window -> failures per minute, firing above 10."""
    per_min = failures_delta * 60.0 / window_s if window_s > 0 else 0.0
    return Verdict(
        per_min > DB_FAILURES_PER_MIN,
        f"{failures_delta:g} connection failures in {window_s:.1f} s = {per_min:.1f}/min "
        f"(fires above {DB_FAILURES_PER_MIN:g}/min)",
    )


def median(values: Sequence[float]) -> float:
    """statistics.median, nan when empty."""
    return statistics.median(values) if values else float("nan")


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    """A JSON file's content."""
    return json.loads(path.read_text(encoding="utf-8"))


def last_line(text: str | None) -> str:
    """The last non-empty line of a command's output."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    """Poll `pred()` until it returns something truthy or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    value = pred()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = pred()
    return value
