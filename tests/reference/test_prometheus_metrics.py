"""The reference's Prometheus exposition, `GET /metrics` (not a contract route: what a real
service exports, and what a watch reads to see what users saw).

Every answered request counts under its route TEMPLATE, including the answers the gateway gives
itself (injected faults, 401); a scrape never counts itself.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from contract_support import (
    ADMIN_PASSWORD,
    TERMINAL,
    Api,
    TargetFactory,
    assert_error,
    is_status,
    poll_until,
    recv_until,
    start_target,
    ws_connect,
)
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from collections.abc import Iterator

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

FAULTS = "/api/_faults"
REQUESTS = "etlplus_http_requests_total"
DURATION = "etlplus_http_request_duration_seconds"

#: a sample: (name, sorted label pairs)
Key = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def target() -> Iterator[EmbeddedTarget]:
    """A reference server with --enable-faults, for this module alone (no other traffic)."""
    started = start_target(enable_faults=True)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def mapi(target: EmbeddedTarget) -> Iterator[Api]:
    """A client of the module's server; every fault is cleared before and after the test."""
    with Api(target) as client:
        assert client.request("DELETE", FAULTS).status_code == 200
        yield client
        assert client.request("DELETE", FAULTS).status_code == 200


def _scrape(api: Api) -> dict[Key, float]:
    """GET /metrics, checked and parsed: every sample by (name, labels)."""
    r = api.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    content_type = r.headers["content-type"]
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _requests(method: str, route: str, code: int) -> Key:
    return (REQUESTS, (("code", str(code)), ("method", method), ("route", route)))


def _duration(suffix: str, method: str, route: str, le: str | None = None) -> Key:
    labels = [("method", method), ("route", route)]
    if le is not None:
        labels.append(("le", le))
    return (DURATION + suffix, tuple(sorted(labels)))


def _delta(before: dict[Key, float], after: dict[Key, float], key: Key) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_exposition_format(mapi: Api) -> None:
    """/metrics is the text format 0.0.4 with the documented families, types and labels."""
    assert mapi.get("/api/health").status_code == 200
    r = mapi.get("/metrics")
    assert r.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    expected_types = {
        "etlplus_http_requests": "counter",
        DURATION: "histogram",
        "etlplus_ws_messages_sent": "counter",
        "etlplus_ws_connections": "gauge",
        "etlplus_ws_push_delay_seconds": "histogram",
    }
    for name, kind in expected_types.items():
        assert name in families, f"{name} missing from /metrics: {sorted(families)}"
        assert families[name].type == kind, (name, families[name].type)
    sample = next(s for s in families["etlplus_http_requests"].samples if s.name == REQUESTS)
    assert set(sample.labels) == {"method", "route", "code"}, sample
    buckets = {s.labels["le"] for s in families[DURATION].samples if s.name == DURATION + "_bucket"}
    assert {"0.001", "10.0", "+Inf"} <= buckets, sorted(buckets)
    health = _scrape(mapi)[_requests("GET", "/api/health", 200)]
    assert health >= 1, "GET /api/health was not counted"


def test_errors_count_under_their_route_template(mapi: Api) -> None:
    """A 404 JOB_NOT_FOUND, a 404 of an unknown route, a 400 and an injected 500 each count
    once, with the route template (never the raw path) and the status; the histogram's count
    grows with them, and injected latency shows in its buckets."""
    job_id = f"nope_{uuid.uuid4().hex[:12]}"
    before = _scrape(mapi)
    assert_error(mapi.get(f"/api/jobs/{job_id}"), 404, "JOB_NOT_FOUND")
    assert_error(mapi.get(f"/api/{job_id}/x"), 404, "NOT_FOUND")
    json_type = {"Content-Type": "application/json"}
    assert_error(mapi.post("/api/jobs", content=b"{", headers=json_type), 400)
    injected = {"fraction": 1.0, "status": 500, "route_prefix": "/api/monitor/status"}
    assert mapi.post(FAULTS, json={"errors": injected}).status_code == 200
    assert_error(mapi.get("/api/monitor/status"), 500, "INTERNAL_ERROR")
    slow = {"ms": 300, "route_prefix": "/api/monitor/metrics"}
    assert mapi.post(FAULTS, json={"errors": {"fraction": 0}, "latency": slow}).status_code == 200
    assert mapi.get("/api/monitor/metrics").status_code == 200
    after = _scrape(mapi)

    for key in (
        _requests("GET", "/api/jobs/{job_id}", 404),
        _requests("GET", "unmatched", 404),
        _requests("POST", "/api/jobs", 400),
        _requests("GET", "/api/monitor/status", 500),
        _requests("GET", "/api/monitor/metrics", 200),
    ):
        assert _delta(before, after, key) == 1, (key, before.get(key), after.get(key))
    for method, route in (("GET", "/api/jobs/{job_id}"), ("GET", "/api/monitor/status")):
        key = _duration("_count", method, route)
        assert _delta(before, after, key) == 1, (key, before.get(key), after.get(key))
    # the injected 300 ms: above the 0.25 s bucket, within the 0.5 s one
    slow_route = ("GET", "/api/monitor/metrics")
    assert _delta(before, after, _duration("_bucket", *slow_route, le="0.25")) == 0
    assert _delta(before, after, _duration("_bucket", *slow_route, le="0.5")) == 1
    assert _delta(before, after, _duration("_sum", *slow_route)) >= 0.3
    routes = {dict(labels).get("route") for name, labels in after if name == REQUESTS}
    assert not any(job_id in str(route) for route in routes), sorted(map(str, routes))


def test_metrics_does_not_count_itself(mapi: Api) -> None:
    """Scrapes leave no trace: no `/metrics` series, and nothing else moves between two of them."""
    first = _scrape(mapi)
    second = _scrape(mapi)
    routes = {dict(labels).get("route") for name, labels in second if name == REQUESTS}
    assert "/metrics" not in routes, sorted(map(str, routes))
    counted = {k: v for k, v in second.items() if k[0] in (REQUESTS, DURATION + "_count")}
    assert counted == {k: v for k, v in first.items() if k in counted}, "a scrape was counted"


def test_websocket_metrics(mapi: Api, target: EmbeddedTarget) -> None:
    """An open WebSocket shows in etlplus_ws_connections; a job's pushes raise
    etlplus_ws_messages_sent_total and the push-delay histogram's count."""
    before = _scrape(mapi)
    with ws_connect(target) as ws:
        poll_until(
            lambda: _scrape(mapi)[("etlplus_ws_connections", ())] >= 1,
            timeout=5,
            what="etlplus_ws_connections >= 1",
        )
        job_id = mapi.create_job()
        recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
        after = _scrape(mapi)
    assert _delta(before, after, ("etlplus_ws_messages_sent_total", ())) >= 2
    assert _delta(before, after, ("etlplus_ws_push_delay_seconds_count", ())) >= 2


def test_metrics_is_open_and_counts_401s(make_target: TargetFactory) -> None:
    """With authentication on, /metrics needs no token (like health), and a 401 the gateway
    answers before routing counts under the route it was for."""
    target = make_target(admin_password=ADMIN_PASSWORD)
    with Api(target) as api:
        before = _scrape(api)
        assert_error(api.get("/api/jobs"), 401, "UNAUTHORIZED")
        after = _scrape(api)
    assert _delta(before, after, _requests("GET", "/api/jobs", 401)) == 1
