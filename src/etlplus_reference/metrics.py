"""Process metrics and request counters for the health routes (contract section 3).

psutil's `cpu_percent` measures between two calls, so a background sampler refreshes a snapshot once
a second; health routes read the snapshot and stay far below 100 ms.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["ProcessSampler", "RequestCounters", "memory_limit_bytes"]

_CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_limit_bytes() -> int:
    """The memory this process may use: the cgroup limit when one is set, else total RAM."""
    total = int(psutil.virtual_memory().total)
    for path in _CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


@dataclass
class RequestCounters:
    """Cumulative HTTP request counters since start."""

    total: int = 0
    errors: int = 0
    server_errors: int = 0


#: CPU is refreshed over at least this interval (shorter ones are dominated by tick resolution)
MIN_CPU_INTERVAL_S = 0.5


class ProcessSampler:
    """A snapshot of this process's CPU and memory, refreshed by `sample()`."""

    def __init__(self) -> None:
        self.process = psutil.Process(os.getpid())
        self.limit_bytes = memory_limit_bytes()
        self.process.cpu_percent(None)  # the first call only starts the measurement
        self.cpu_percent = 0.0
        self.rss_bytes = 0
        self.system_cpu_percent = 0.0
        self.sampled_at = 0.0
        psutil.cpu_percent(None)
        self._cpu_since = time.monotonic()
        self._cpu_cap = 100.0 * (psutil.cpu_count() or 1)
        self.sample()

    def sample(self) -> None:
        """Refresh the snapshot (cheap: a few /proc reads).

        CPU is measured between two calls; over a few milliseconds (the call right after start)
        the clock-tick resolution of the process's CPU time gives nonsense such as 3617%, so CPU
        is only refreshed after at least `MIN_CPU_INTERVAL_S`, and never above 100% per core.
        """
        self.rss_bytes = int(self.process.memory_info().rss)
        now = time.monotonic()
        if now - self._cpu_since >= MIN_CPU_INTERVAL_S:
            cpu = float(self.process.cpu_percent(None))
            self.cpu_percent = max(0.0, min(cpu, self._cpu_cap))
            self.system_cpu_percent = float(psutil.cpu_percent(None))
            self._cpu_since = now
        self.sampled_at = time.time()

    @property
    def memory_percent(self) -> float:
        """RSS as a share (0-100) of the memory the process may use."""
        return round(min(100.0, 100.0 * self.rss_bytes / self.limit_bytes), 3)
