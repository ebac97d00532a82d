"""A relative FAIL on a busy host is not a verdict: the one rule, for every caller.

A slowdown measured while other processes held the CPU (`etlverify.measure.host`) may be the
host's, not the target's. The rule (issue: "measure the measurer"):

1. a measurement whose comparison has a *relative* FAIL (the 10% rule on latency or throughput,
   or the response-time trigger) and whose windows were contended is measured again: only that
   measurement, at most `REMEASURE_LIMIT` (2) more times;
2. still failing on a still contended host, the relative FAILs become INCONCLUSIVE, naming the
   contention ("host busy: other processes 71% CPU in windows 3-5, re-measured twice");
3. failing on a quiet host, it fails; passing after a re-measure, it passes;
4. absolute findings (errors, outages, memory, database failures) are never excused.

`settle(measure, fails)` applies it: `measure()` takes one measurement and returns it with its host
windows, `fails(measurement)` says whether it has a relative FAIL. The pytest performance section
(`pytest_plugin.performance.PerfCollector`) and `benchmarks/gate_quality.py` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from etlverify.measure.host import describe_contention

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from etlverify.measure.host import HostWindow

__all__ = ["REMEASURE_LIMIT", "Settled", "excuse_text", "settle"]

#: how often a measurement whose relative FAIL met a contended host is measured again
REMEASURE_LIMIT = 2

M = TypeVar("M")


@dataclass(frozen=True)
class Settled(Generic[M]):
    """The measurement that stands, its host windows, how often it was measured again, and the
    excuse for its relative FAILs (None: they stand, or there are none)."""

    measurement: M
    host: tuple[HostWindow, ...]
    remeasured: int
    excuse: str | None


def excuse_text(contention: str, remeasured: int) -> str:
    """`host busy: other processes 90% CPU in windows 1-5, re-measured twice; not a verdict on
    the target`."""
    times = {1: "once", 2: "twice"}.get(remeasured, f"{remeasured} times")
    return (
        f"host busy: {contention.removeprefix('host: ')}, re-measured {times}; not a verdict on "
        "the target"
    )


def settle(
    measure: Callable[[], tuple[M, Sequence[HostWindow]]],
    fails: Callable[[M], bool],
    *,
    limit: int = REMEASURE_LIMIT,
    first: tuple[M, Sequence[HostWindow]] | None = None,
    on_remeasure: Callable[[int, str], None] | None = None,
) -> Settled[M]:
    """Measure (or take `first`), and measure again while a relative FAIL meets a contended host,
    at most `limit` more times (module docstring)."""
    measurement, host = first if first is not None else measure()
    done = 0
    while True:
        contention = describe_contention(list(host))
        if contention is None or not fails(measurement):
            return Settled(measurement, tuple(host), done, None)
        if done >= limit:
            return Settled(measurement, tuple(host), done, excuse_text(contention, done))
        done += 1
        if on_remeasure is not None:
            on_remeasure(done, contention)
        measurement, host = measure()
