"""How a failure inside a check is told and classified (`pytest_plugin.targethealth`), without a
run: a library's transport error is a finding on the target, never "the check itself broke" with
an exception class name and a library's file (issue 17 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from etlverify.pytest_plugin.targethealth import _kind, _leaf_text, _location, transport_failure

REPO = Path(__file__).resolve().parents[2]


def _request() -> httpx.Request:
    return httpx.Request("GET", "http://target.test/api/jobs?limit=5")


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (
            httpx.ReadTimeout("timed out", request=_request()),
            "timeout",
            "GET /api/jobs: no response in time (the check's own HTTP client timed out)",
        ),
        (
            httpx.ConnectError("[Errno 111] Connection refused", request=_request()),
            "refused",
            "GET /api/jobs: connection refused",
        ),
        (
            httpx.RemoteProtocolError("Server disconnected", request=_request()),
            "dropped",
            "GET /api/jobs: the connection was dropped or the answer was broken",
        ),
        (TimeoutError("timed out"), "timeout", "no answer in time"),
        (
            ConnectionResetError(104, "Connection reset by peer"),
            "dropped",
            "the connection was reset",
        ),
    ],
)
def test_a_library_transport_error_is_a_target_finding(
    exc: BaseException, kind: str, text: str
) -> None:
    assert transport_failure(exc) == (kind, text)
    assert _kind(exc) == "transport"
    told = _leaf_text(exc)
    assert told == text
    assert type(exc).__name__ not in told


def test_an_internal_error_is_told_in_words_at_the_projects_own_line() -> None:
    try:
        json.loads("not json")
    except ValueError as exc:
        excinfo = pytest.ExceptionInfo.from_exception(exc)
    assert _kind(excinfo.value) == "error"
    assert transport_failure(excinfo.value) is None
    where = _location(excinfo, REPO)
    # the innermost frame is the standard library's; the place shown is this test's own line
    assert where.startswith(" (tests/plugin/test_failure_classes.py:"), where
    assert _leaf_text(excinfo.value).startswith("json decode error: Expecting value")
