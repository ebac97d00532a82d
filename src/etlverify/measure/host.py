"""The host's contention while a measurement runs: measure the measurer.

A CI runner or a laptop is shared. A slowdown measured while other processes held the CPU is the
host's, not the target's, and must not become a DO NOT PROMOTE. `HostSampler` samples, in a
background thread, what the kernel says about the whole machine (``/proc/stat``: busy, steal and
runnable tasks) and what our own processes used (``psutil``: the load generator itself and the
processes it was told to leave out, such as an embedded target it started), so that
"other processes" is the CPU nobody in this measurement asked for. `HostSampler.window(t0, t1)`
gives the figures of one measurement window (`HostWindow`), and `describe_contention` says in one
line which windows were contended and by what ("host: other processes 71% CPU in windows 3-5").

Thresholds (`ContentionLimits`): other processes >= 50% of one core, steal >= 10% of the CPU,
runnable tasks beyond the cores by 1.5 per core, or the load generator itself >= 90% of a core
(Locust warns there: its own timings stop being the target's). Figures are percentages of one
core (``top``'s convention), steal a percentage of all CPU time.

Plain Python; on a platform without ``/proc`` the sampler records nothing and every window is
"unknown" (never "quiet").
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "ContentionLimits",
    "HostSample",
    "HostSampler",
    "HostWindow",
    "describe_contention",
    "read_proc_stat",
]

_PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class ContentionLimits:
    """When a window counts as contended (see the module docstring)."""

    other_cpu_pct: float = 50.0
    steal_pct: float = 10.0
    runnable_per_core: float = 1.5
    own_cpu_pct: float = 90.0


@dataclass(frozen=True)
class HostSample:
    """One reading: monotonic time, the machine's CPU jiffies, runnable tasks, our CPU seconds."""

    t: float
    busy: float  # jiffies, all cores, excluding idle and iowait
    total: float  # jiffies, all cores
    steal: float  # jiffies
    runnable: int  # procs_running (includes the reader itself)
    own_cpu_s: float  # CPU seconds of this process
    excluded_cpu_s: float  # CPU seconds of the processes to leave out (an embedded target)


@dataclass(frozen=True)
class HostWindow:
    """The host during one measurement window; None figures are unknown (no /proc)."""

    start_s: float
    end_s: float
    other_cpu_pct: float | None = None
    steal_pct: float | None = None
    runnable_per_core: float | None = None
    own_cpu_pct: float | None = None
    #: the open-model sender's lateness (ms behind its schedule, p95), when the load has one
    sender_late_ms: float | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def known(self) -> bool:
        """True when the window was sampled."""
        return self.other_cpu_pct is not None

    @property
    def contended(self) -> bool:
        """True when any figure was beyond its limit (`reasons` says which)."""
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (for windows, evidence and reports)."""
        return {
            "other_cpu_pct": _round(self.other_cpu_pct),
            "steal_pct": _round(self.steal_pct),
            "runnable_per_core": _round(self.runnable_per_core, 2),
            "own_cpu_pct": _round(self.own_cpu_pct),
            "sender_late_ms": _round(self.sender_late_ms, 2),
            "contended": self.contended,
            "reasons": list(self.reasons),
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def read_proc_stat(path: Path = _PROC_STAT) -> tuple[float, float, float, int] | None:
    """(busy, total, steal, procs_running) from ``/proc/stat``; None when it cannot be read."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    busy = total = steal = 0.0
    running = 0
    seen = False
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "cpu":
            values = [float(v) for v in parts[1:]]
            values += [0.0] * (8 - len(values))
            # user nice system idle iowait irq softirq steal (guest is already inside user)
            user, nice, system, idle, iowait, irq, softirq, st = values[:8]
            busy = user + nice + system + irq + softirq + st
            total = busy + idle + iowait
            steal = st
            seen = True
        elif parts[0] == "procs_running" and len(parts) > 1:
            running = int(parts[1])
    return (busy, total, steal, running) if seen else None


def _cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) of `pids` and their children; a vanished process counts 0."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return 0.0
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except (psutil.Error, OSError):
            continue
        for p in procs:
            try:
                t = p.cpu_times()
            except (psutil.Error, OSError):
                continue
            total += t.user + t.system
    return total


class HostSampler:
    """Samples the host every `interval_s` in a daemon thread (`start`/`stop`, or `with`).

    `exclude` gives the pids whose CPU is part of this measurement (an embedded target the run
    started; Locust workers); they and their children are not "other processes". The sampler's
    own process is counted separately as the load generator (`own_cpu_pct`).
    """

    def __init__(
        self,
        *,
        interval_s: float = 0.5,
        exclude: Callable[[], Sequence[int]] | None = None,
        limits: ContentionLimits | None = None,
        cores: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        reader: Callable[[], tuple[float, float, float, int] | None] = read_proc_stat,
    ) -> None:
        self.interval_s = interval_s
        self.exclude = exclude or (lambda: ())
        self.limits = limits or ContentionLimits()
        self.cores = cores or os.cpu_count() or 1
        self.clock = clock
        self.reader = reader
        self.samples: list[HostSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def sample(self) -> HostSample | None:
        """Take one reading now (also used by the thread); None without /proc."""
        stat = self.reader()
        if stat is None:
            return None
        busy, total, steal, running = stat
        own = os.times()
        reading = HostSample(
            t=self.clock(),
            busy=busy,
            total=total,
            steal=steal,
            runnable=running,
            own_cpu_s=own.user + own.system,
            excluded_cpu_s=_cpu_seconds(self.exclude()),
        )
        with self._lock:
            self.samples.append(reading)
        return reading

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> HostSampler:
        """Start sampling (a first reading at once)."""
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="etlverify-host", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling (a last reading first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.sample()

    def __enter__(self) -> HostSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def window(
        self, start_s: float, end_s: float, *, sender_late_ms: float | None = None
    ) -> HostWindow:
        """The host's figures between two readings around [start_s, end_s] (monotonic times)."""
        with self._lock:
            samples = list(self.samples)
        before = [s for s in samples if s.t <= start_s]
        after = [s for s in samples if s.t >= end_s]
        inside = [s for s in samples if start_s < s.t < end_s]
        first = before[-1] if before else (inside[0] if inside else None)
        last = after[0] if after else (inside[-1] if inside else None)
        if first is None or last is None or last.total <= first.total:
            return HostWindow(start_s, end_s, sender_late_ms=sender_late_ms)
        jiffies = last.total - first.total
        seconds = jiffies / self.cores / self._hz  # wall seconds the readings span
        busy_s = (last.busy - first.busy) / self._hz
        own_s = max(0.0, last.own_cpu_s - first.own_cpu_s)
        excluded_s = max(0.0, last.excluded_cpu_s - first.excluded_cpu_s)
        other_pct = max(0.0, busy_s - own_s - excluded_s) / seconds * 100.0 if seconds else 0.0
        steal_pct = (last.steal - first.steal) / jiffies * 100.0
        span = [s for s in samples if first.t <= s.t <= last.t]
        # the reader itself is one runnable task in every reading
        runnable = sum(max(0, s.runnable - 1) for s in span) / len(span) / self.cores
        own_pct = own_s / seconds * 100.0 if seconds else 0.0
        window = HostWindow(
            start_s,
            end_s,
            other_cpu_pct=other_pct,
            steal_pct=steal_pct,
            runnable_per_core=runnable,
            own_cpu_pct=own_pct,
            sender_late_ms=sender_late_ms,
        )
        return _with_reasons(window, self.limits)


def _with_reasons(window: HostWindow, limits: ContentionLimits) -> HostWindow:
    reasons: list[str] = []
    if window.other_cpu_pct is not None and window.other_cpu_pct >= limits.other_cpu_pct:
        reasons.append(f"other processes {window.other_cpu_pct:.0f}% CPU")
    if window.steal_pct is not None and window.steal_pct >= limits.steal_pct:
        reasons.append(f"steal {window.steal_pct:.0f}%")
    if window.runnable_per_core is not None and window.runnable_per_core >= (
        limits.runnable_per_core
    ):
        reasons.append(f"{window.runnable_per_core:.1f} runnable tasks per core")
    if window.own_cpu_pct is not None and window.own_cpu_pct >= limits.own_cpu_pct:
        reasons.append(f"the load generator itself at {window.own_cpu_pct:.0f}% CPU")
    return HostWindow(
        window.start_s,
        window.end_s,
        other_cpu_pct=window.other_cpu_pct,
        steal_pct=window.steal_pct,
        runnable_per_core=window.runnable_per_core,
        own_cpu_pct=window.own_cpu_pct,
        sender_late_ms=window.sender_late_ms,
        reasons=tuple(reasons),
    )


def describe_contention(windows: Sequence[HostWindow]) -> str | None:
    """`host: other processes 71% CPU in windows 3-5` (1-based, the worst figure of each kind);
    None when no window was contended."""
    if not windows:
        return None
    busy = [i for i, w in enumerate(windows, 1) if w.contended]
    if not busy:
        return None
    kinds: dict[str, str] = {}
    worst = max((windows[i - 1] for i in busy), key=lambda w: w.other_cpu_pct or 0.0)
    for reason in worst.reasons:
        kinds.setdefault(reason.split(" ")[0], reason)
    for i in busy:
        for reason in windows[i - 1].reasons:
            kinds.setdefault(reason.split(" ")[0], reason)
    return f"host: {', '.join(kinds.values())} in {_ranges(busy)}"


def _ranges(indexes: Sequence[int]) -> str:
    """`window 2`, `windows 3-5`, `windows 1, 3-4`."""
    parts: list[str] = []
    start = prev = indexes[0]
    for i in [*indexes[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    word = "window" if len(indexes) == 1 else "windows"
    return f"{word} {', '.join(parts)}"
