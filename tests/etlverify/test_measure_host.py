"""The host sampler: contention figures from built readings, and from a real busy loop."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import TYPE_CHECKING

import pytest

from etlverify.measure.host import (
    HostSampler,
    HostWindow,
    describe_contention,
    read_proc_stat,
)

if TYPE_CHECKING:
    from pathlib import Path

HZ = float(os.sysconf("SC_CLK_TCK"))


class FakeProc:
    """/proc/stat readings that a test scripts: (busy, total, steal, running) per call."""

    def __init__(self, readings: list[tuple[float, float, float, int]]) -> None:
        self.readings = readings
        self.i = 0

    def __call__(self) -> tuple[float, float, float, int]:
        reading = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return reading


def _sampler(readings: list[tuple[float, float, float, int]], cores: int = 2) -> HostSampler:
    clock = iter(range(100))
    return HostSampler(cores=cores, reader=FakeProc(readings), clock=lambda: float(next(clock)))


def test_other_processes_steal_and_runnable_from_readings() -> None:
    # 2 cores, 1 s between readings: 2 * HZ jiffies in all; busy 1.4 cores of it, steal 0.3 core
    s = _sampler([(0.0, 0.0, 0.0, 1), (1.4 * HZ, 2 * HZ, 0.3 * HZ, 5)])
    s.sample()
    s.sample()
    w = s.window(0.0, 1.0)
    assert w.known
    # our own process used (almost) nothing, so other processes ~140% of one core
    assert w.other_cpu_pct is not None
    assert 130.0 <= w.other_cpu_pct <= 140.0
    assert w.steal_pct == pytest.approx(15.0)
    assert w.runnable_per_core == pytest.approx((0 + 4) / 2 / 2)
    assert w.contended
    assert w.reasons[0].startswith("other processes 1")
    assert "steal 15%" in w.reasons


def test_a_quiet_host_is_not_contended_and_unknown_is_not_quiet() -> None:
    s = _sampler([(0.0, 0.0, 0.0, 1), (0.05 * HZ, 2 * HZ, 0.0, 1)])
    s.sample()
    s.sample()
    quiet = s.window(0.0, 1.0)
    assert quiet.known
    assert not quiet.contended
    unknown = HostSampler(reader=lambda: None).window(0.0, 1.0)
    assert not unknown.known
    assert unknown.to_json()["other_cpu_pct"] is None


def test_describe_names_the_kind_and_the_windows() -> None:
    busy = HostWindow(0, 1, 71.0, 0.0, 0.5, 10.0, reasons=("other processes 71% CPU",))
    quiet = HostWindow(0, 1, 5.0, 0.0, 0.1, 10.0)
    text = describe_contention([quiet, quiet, busy, busy, busy])
    assert text == "host: other processes 71% CPU in windows 3-5"
    assert describe_contention([busy, quiet, busy]) == (
        "host: other processes 71% CPU in windows 1, 3"
    )
    assert describe_contention([quiet]) is None


def test_proc_stat_parsing(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  100 5 50 1000 20 3 2 7 0 0\ncpu0 50 2 25 500 10 1 1 3 0 0\nprocs_running 3\n"
    )
    assert read_proc_stat(stat) == (167.0, 1187.0, 7.0, 3)
    assert read_proc_stat(tmp_path / "missing") is None


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.mark.skipif(read_proc_stat() is None, reason="no /proc/stat on this platform")
def test_a_real_busy_loop_is_seen_as_other_processes() -> None:
    """The bad day, for real: a busy loop in another process is 'other processes' (>= 50% of a
    core), while the same loop in a process the sampler is told to leave out is not."""
    ctx = multiprocessing.get_context("spawn")
    with HostSampler(interval_s=0.1) as sampler:
        proc = ctx.Process(target=_spin, args=(1.5,))
        t0 = time.monotonic()
        proc.start()
        proc.join(10)
        busy = sampler.window(t0 + 0.4, time.monotonic() - 0.1)
    assert busy.other_cpu_pct is not None
    assert busy.other_cpu_pct >= 50.0, busy
    assert busy.contended
    excluded: list[int] = []
    with HostSampler(interval_s=0.1, exclude=lambda: excluded) as sampler:
        proc = ctx.Process(target=_spin, args=(1.5,))
        proc.start()
        assert proc.pid is not None
        excluded.append(proc.pid)
        time.sleep(1.2)
        proc.join(10)
    # the excluded loop is part of this measurement: its CPU is counted as such, not as "other
    # processes" (whatever else runs on a shared host stays "other", so compare the accounts)
    seen = [s.excluded_cpu_s for s in sampler.samples]
    assert max(seen) - min(seen) >= 0.4, seen
