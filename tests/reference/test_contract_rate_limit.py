"""Contract section 6 (rate limiting) against the reference target with low limits.

Windows are fixed minutes: a scenario that straddles a window boundary is retried once (the counters
restart at the boundary, which is the contract's behaviour, not a failure).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from contract_support import HTTP_TIMEOUT, TargetFactory, assert_error, start_target

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

JOBS_LIMIT = 5
MONITOR_LIMIT = 3
LOW_LIMITS = {
    "rate_limits": {
        "rules": {"/api/jobs": JOBS_LIMIT, "/api/monitor": MONITOR_LIMIT, "/api/health": 100000}
    }
}
_ips = (f"10.{i // 250}.{i % 250}.7" for i in itertools.count(1))


@pytest.fixture(scope="module")
def limited() -> Iterator[EmbeddedTarget]:
    """A reference server with jobs limited to 5 and monitor to 3 requests a minute."""
    target = start_target(overrides=LOW_LIMITS)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def http(limited: EmbeddedTarget) -> Iterator[httpx.Client]:
    """A plain client of the limited server."""
    with httpx.Client(base_url=limited.base_url, timeout=HTTP_TIMEOUT) as client:
        yield client


def _as(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def _within_one_window(scenario: Callable[[str], list[httpx.Response]]) -> list[httpx.Response]:
    """Run `scenario` for a fresh client identity; rerun once if it crossed a window boundary."""
    for _ in range(2):
        responses = scenario(next(_ips))
        resets = {r.headers.get("X-RateLimit-Reset") for r in responses}
        if len(resets) == 1:
            return responses
    raise AssertionError(f"X-RateLimit-Reset changed within one window twice: {resets}")


def test_headers_count_down(http: httpx.Client) -> None:
    """§6: responses under a rule carry Limit, a Remaining counting down, a unix-seconds Reset."""
    responses = _within_one_window(
        lambda ip: [http.get("/api/jobs", headers=_as(ip)) for _ in range(JOBS_LIMIT)]
    )
    now = time.time()
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.headers["X-RateLimit-Limit"] == str(JOBS_LIMIT)
        assert r.headers["X-RateLimit-Remaining"] == str(JOBS_LIMIT - 1 - i)
        reset = int(r.headers["X-RateLimit-Reset"])
        assert now - 1 <= reset <= now + 61, (reset, now)


def test_over_limit_is_429_with_retry_after(http: httpx.Client) -> None:
    """§6: the request past the limit gets 429 RATE_LIMIT_EXCEEDED with Retry-After."""
    responses = _within_one_window(
        lambda ip: [http.get("/api/jobs", headers=_as(ip)) for _ in range(JOBS_LIMIT + 2)]
    )
    assert [r.status_code for r in responses] == [200] * JOBS_LIMIT + [429, 429]
    for r in responses[JOBS_LIMIT:]:
        assert_error(r, 429, "RATE_LIMIT_EXCEEDED")
        retry = r.headers.get("Retry-After")
        assert retry is not None, "429 without Retry-After"
        assert retry.isdigit(), retry
        assert 1 <= int(retry) <= 60, retry
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert r.headers["X-RateLimit-Limit"] == str(JOBS_LIMIT)


def test_refused_post_creates_no_job(http: httpx.Client) -> None:
    """§6: a refused request is not executed (a 429 POST /api/jobs creates no job)."""
    body = {"type": "EXTRACT", "source_config": "rows=10;batch=10", "target_config": "t"}

    def scenario(ip: str) -> list[httpx.Response]:
        return [http.post("/api/jobs", headers=_as(ip), json=body) for _ in range(JOBS_LIMIT + 1)]

    responses = _within_one_window(scenario)
    refused = responses[-1]
    assert_error(refused, 429, "RATE_LIMIT_EXCEEDED")
    assert "job_id" not in refused.json()
    created = [r.json()["job_id"] for r in responses[:-1]]
    assert len(created) == JOBS_LIMIT


def test_limits_are_per_client(http: httpx.Client) -> None:
    """§6: clients are counted apart (X-Forwarded-For from the trusted loopback proxy)."""

    def scenario(ip: str) -> list[httpx.Response]:
        first = [http.get("/api/monitor/status", headers=_as(ip)) for _ in range(MONITOR_LIMIT + 1)]
        other = http.get("/api/monitor/status", headers=_as(f"{ip}9"))
        return [*first, other]

    responses = _within_one_window(scenario)
    assert responses[MONITOR_LIMIT].status_code == 429
    assert responses[-1].status_code == 200, responses[-1].text
    assert responses[-1].headers["X-RateLimit-Remaining"] == str(MONITOR_LIMIT - 1)


def test_first_forwarded_entry_is_the_client(http: httpx.Client) -> None:
    """§6: the client is the first X-Forwarded-For entry (later proxies do not matter)."""

    def scenario(ip: str) -> list[httpx.Response]:
        return [
            http.get("/api/monitor/status", headers=_as(f"{ip}, 192.168.0.{i}"))
            for i in range(MONITOR_LIMIT + 1)
        ]

    responses = _within_one_window(scenario)
    assert [r.status_code for r in responses] == [200] * MONITOR_LIMIT + [429]


def test_limits_are_per_route_prefix(http: httpx.Client) -> None:
    """§6: a client refused on /api/monitor may still use /api/jobs (and sub-paths share a rule)."""

    def scenario(ip: str) -> list[httpx.Response]:
        used = [http.get("/api/monitor/metrics", headers=_as(ip)) for _ in range(MONITOR_LIMIT)]
        used.append(http.get("/api/monitor/jobs", headers=_as(ip)))
        used.append(http.get("/api/jobs", headers=_as(ip)))
        return used

    responses = _within_one_window(scenario)
    assert responses[MONITOR_LIMIT].status_code == 429, "sub-path of /api/monitor not counted"
    jobs = responses[-1]
    assert jobs.status_code == 200, jobs.text
    assert jobs.headers["X-RateLimit-Limit"] == str(JOBS_LIMIT)
    assert jobs.headers["X-RateLimit-Remaining"] == str(JOBS_LIMIT - 1)


def test_reset_is_fixed_within_the_window(http: httpx.Client) -> None:
    """§6: fixed windows: every response of a window names the same Reset, its end."""
    responses = _within_one_window(
        lambda ip: [http.get("/api/jobs", headers=_as(ip)) for _ in range(3)]
    )
    reset = int(responses[0].headers["X-RateLimit-Reset"])
    assert reset > time.time() - 1
    assert all(int(r.headers["X-RateLimit-Reset"]) == reset for r in responses)


def test_untrusted_peer_forwarded_for_is_ignored(make_target: TargetFactory) -> None:
    """§6: X-Forwarded-For counts only from a trusted proxy: otherwise the peer is the client."""
    target = make_target(
        {"rate_limits": {"trusted_proxies": [], "rules": {"/api/monitor": MONITOR_LIMIT}}}
    )
    with httpx.Client(base_url=target.base_url, timeout=HTTP_TIMEOUT) as http:

        def scenario(ip: str) -> list[httpx.Response]:
            return [
                http.get("/api/monitor/status", headers=_as(f"{ip}{i}"))
                for i in range(MONITOR_LIMIT + 1)
            ]

        responses = scenario(next(_ips))
        if len({r.headers.get("X-RateLimit-Reset") for r in responses}) > 1:
            responses = scenario(next(_ips))  # crossed a window boundary: counters restarted
    assert [r.status_code for r in responses][-1] == 429, [r.status_code for r in responses]


def test_health_is_limited_too(http: httpx.Client) -> None:
    """§6: health is under its own rule: its responses carry the X-RateLimit headers."""
    r = http.get("/api/health", headers=_as(next(_ips)))
    assert r.status_code == 200
    assert r.headers["X-RateLimit-Limit"] == "100000"
