"""Switch the reference target's fault injection (``/api/_faults``) on and off.

Only the embedded reference started with ``--enable-faults`` has these switches; the suite's own
tests use them to prove that every check notices a misbehaving target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from etlverify.client import EtlClient, Expect

__all__ = ["FAULTS_PATH", "FaultsControl"]

FAULTS_PATH = "/api/_faults"


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
        resp = self.expect.status(self.api.post(FAULTS_PATH, json=settings), (200, 204))
        return self.expect.json_fields(resp, {}) if resp.content else {}

    def clear(self) -> None:
        """Switch every fault off."""
        self.expect.status(self.api.delete(FAULTS_PATH), (200, 204))
