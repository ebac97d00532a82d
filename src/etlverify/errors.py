"""The exceptions of etlverify, in one place so every layer raises the same types.

Exception tree::

    EtlVerifyError                      anything etlverify raises on purpose
    ├── SettingsError (ValueError)      a setting has a bad value; the message names its source
    ├── TargetError                     the target did not answer usably: refused, reset, timed out,
    │                                   invalid JSON where JSON was needed, WebSocket refused
    └── CheckFailed (AssertionError)    the target answered, but not as the contract says

`CheckFailed` is an `AssertionError` so that pytest counts it as a failed test (not an error) and so
that code written with plain `assert` and code using `Expect` read the same in reports. Both
`TargetError` and `CheckFailed` carry a message written for people (what was checked, expected
vs got, a curl line); the pytest plugin prints that message instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CheckFailed", "EtlVerifyError", "SettingsError", "TargetError", "in_words"]


class EtlVerifyError(Exception):
    """Base class of every exception etlverify raises on purpose."""


class SettingsError(EtlVerifyError, ValueError):
    """A setting has a bad value. The message is one line that starts with where the value came
    from, e.g. ``--request-timeout: expected seconds > 0, got 'abc'``."""


class TargetError(EtlVerifyError):
    """The target could not be talked to: a transport failure, a timeout, a refused WebSocket
    handshake, or a body that is not the JSON a check needed. The message is complete and ends
    with a way to reproduce (a curl line) where there is one.

    `kind` says which, for the run's root-cause analysis: ``timeout``, ``refused``, ``dropped``,
    ``not-json``, ``ws-handshake``, ``ws`` (a WebSocket that closed or went silent), ``blocked``
    (not sent: the target was already down) or ``""`` (unclassified).
    """

    def __init__(self, message: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.kind))


@dataclass(eq=False)
class CheckFailed(EtlVerifyError, AssertionError):
    """A check found the target breaking its contract.

    Rendered (``str()``) as::

        <check>: <what>
        blocks checklist: <item ids>
        expected: <expected>
        got:      <got>
        response: <status line and a redacted excerpt>
        Reproduce with: curl ...
    """

    check: str
    what: str
    expected: str = ""
    got: str = ""
    items: Sequence[str] = field(default_factory=tuple)
    excerpt: str = ""
    curl: str = ""

    def __post_init__(self) -> None:
        # Exception.args drives pickling (pytest-xdist) and the default repr.
        super().__init__(self.render())

    def render(self) -> str:
        """The whole failure text, as the plugin prints it."""
        lines = [f"{self.check}: {self.what}" if self.check else self.what]
        if self.items:
            lines.append(f"blocks checklist: {', '.join(self.items)}")
        if self.expected:
            lines.append(f"expected: {self.expected}")
        if self.got:
            lines.append(f"got:      {self.got}")
        if self.excerpt:
            lines.append(f"response: {self.excerpt}")
        if self.curl:
            lines.append(f"Reproduce with: {self.curl}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

    def __reduce__(self) -> tuple[object, ...]:
        return (
            CheckFailed,
            (
                self.check,
                self.what,
                self.expected,
                self.got,
                tuple(self.items),
                self.excerpt,
                self.curl,
            ),
        )


def in_words(exc: BaseException) -> str:
    """What went wrong with a request, for people: never a class name or a library path."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    text = str(exc).strip()
    first = text.splitlines()[0][:120] if text else ""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in first.lower() else "could not connect"
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return "the connection was closed before an answer"
    if isinstance(exc, ValueError):
        return "the answer was not valid JSON"
    return first or "the request failed"
