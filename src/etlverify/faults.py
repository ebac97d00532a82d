"""Switch the reference target's fault injection (``/api/_faults``) on and off.

Only the embedded reference started with ``--enable-faults`` has these switches; the suite's own
tests use them to prove that every check notices a misbehaving target.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from etlverify.client import EtlClient, Expect

__all__ = ["FAULTS_PATH", "FaultsControl", "fault_windows"]

FAULTS_PATH = "/api/_faults"

#: (start, end) wall-clock seconds of every period this process had faults switched on; end is
#: None while they still are. Checks of the target's own health (its log's ERROR lines, say) use it
#: to tell errors the suite induced from errors the target produced by itself.
_WINDOWS: list[tuple[float, float | None]] = []


def fault_windows(grace_s: float = 2.0) -> list[tuple[float, float]]:
    """The periods faults were on in this process, each widened by `grace_s` on both sides."""
    now = time.time()
    return [(a - grace_s, (now if b is None else b) + grace_s) for a, b in _WINDOWS]


class FaultsControl:
    """GET/POST/DELETE ``/api/_faults``: read, merge and clear the fault settings."""

    def __init__(self, api: EtlClient, expect: Expect) -> None:
        self.api = api
        self.expect = expect

    def get(self) -> dict[str, Any]:
        """The current fault settings."""
        resp = self.expect.status(self.api.get(FAULTS_PATH), 200)
        return self.expect.json_fields(resp, {})

    def set(self, **settings: Any) -> dict[str, Any]:
        """Merge `settings` (e.g. ``latency={"ms": 300}``, ``crash=True``) into the faults."""
        if not _WINDOWS or _WINDOWS[-1][1] is not None:
            _WINDOWS.append((time.time(), None))
        # 202: a delayed patch (`after_s=S`), merged by the target S seconds later
        resp = self.expect.status(self.api.post(FAULTS_PATH, json=settings), (200, 202, 204))
        return self.expect.json_fields(resp, {}) if resp.content else {}

    def clear(self) -> None:
        """Switch every fault off."""
        self.expect.status(self.api.delete(FAULTS_PATH), (200, 204))
        if _WINDOWS and _WINDOWS[-1][1] is None:
            _WINDOWS[-1] = (_WINDOWS[-1][0], time.time())
