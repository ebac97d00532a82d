"""Plain helpers of the monitoring validation suite: reading the alerts file, a webhook record.

Contract section 11: `monitor.sh check` appends its alerts to `logs/alerts_YYYYMMDD.log` and exits
non-zero when a WARNING or CRITICAL alert fired.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AlertsLog", "WebhookReceiver", "firing", "wait_until"]

_FIRING = re.compile(r"\b(WARNING|WARN|CRITICAL|ERROR)\b")


def firing(lines: list[str]) -> list[str]:
    """The alert lines above INFO."""
    return [ln for ln in lines if _FIRING.search(ln)]


@dataclass
class AlertsLog:
    """`logs/alerts_*.log`, with a mark so that only lines appended after it are read."""

    logs_dir: Path
    _sizes: dict[Path, int] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """The alerts files, oldest first."""
        return sorted(self.logs_dir.glob("alerts_*.log"))

    def mark(self) -> None:
        """Remember where every alerts file ends now."""
        self._sizes = {p: p.stat().st_size for p in self.files()}

    def new_lines(self) -> list[str]:
        """Lines appended since the mark."""
        lines: list[str] = []
        for path in self.files():
            with path.open("rb") as fh:
                fh.seek(self._sizes.get(path, 0))
                lines += fh.read().decode("utf-8", "replace").splitlines()
        return lines


@dataclass
class WebhookReceiver:
    """What a local HTTP receiver got: (path, headers, body) per POST."""

    url: str = ""
    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        """Called by the server thread for each POST."""
        with self._lock:
            self.posts.append((path, headers, body))

    def received(self) -> list[tuple[str, dict[str, str], bytes]]:
        """The POSTs so far."""
        with self._lock:
            return list(self.posts)


def wait_until(pred: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll `pred()` until it returns something truthy or `timeout` passes; its last value."""
    deadline = time.monotonic() + timeout
    value = pred()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = pred()
    return value
