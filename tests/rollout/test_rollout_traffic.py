"""The judge's per-component traffic and the WebSocket push judgement, with measurements built
here: no target, no server, no load."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.baseline.compare import Verdict
from etlverify.baseline.store import Fingerprint, load, record
from etlverify.contract import FLAG_BY_COMPONENT
from etlverify.measure import LatencyRecorder, MetricResult, RunResult
from etlverify.rollout.cohort import (
    ROUTES,
    against_stored,
    judge,
    judge_load,
    stored_name,
)
from etlverify.rollout.pushes import PushProbe, _Job, _Push, ws_url
from etlverify.rollout.traffic import PUSH_METRIC, TRAFFIC, routes_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

WINDOWS = 8
PER_WINDOW = 50


def _push_windows(
    p50_ms: Callable[[int], float], lost: Callable[[int], int] = lambda w: 0, seed: int = 1
) -> dict[str, MetricResult]:
    """`cohort ws push` as the judge records it: per window PER_WINDOW jobs, first-push latencies
    scattered around that window's p50 (the host's level moves from window to window), and
    `lost(w)` of them with a push missing."""
    rng = random.Random(seed)
    rec = LatencyRecorder(windows=WINDOWS, window_s=1.0)
    for w in range(WINDOWS):
        for _ in range(PER_WINDOW - lost(w)):
            rec.record(PUSH_METRIC, p50_ms(w) * rng.uniform(0.8, 1.2) / 1000.0, window=w)
        for _ in range(lost(w)):
            rec.record_error(PUSH_METRIC, "lost", window=w)
    return {PUSH_METRIC: rec.result(PUSH_METRIC)}


def _level(w: int) -> float:
    """The host's level in window w: a busy second half, as both sides see it."""
    return 4.0 if w < WINDOWS // 2 else 6.5


def _steady(w: int) -> float:
    return 4.0


def test_every_component_has_its_own_traffic() -> None:
    assert set(TRAFFIC) == set(FLAG_BY_COMPONENT)
    assert [r.metric for r in routes_for("request_handler")] == ["cohort GET /api/jobs"]
    assert [r.metric for r in routes_for("websocket")] == [PUSH_METRIC]
    assert routes_for(None) == routes_for("request_handler")
    exception = routes_for("exception")
    assert all(r.expects_error for r in exception)
    assert {r.expect for r in exception} == {(404,), (400,)}
    # every route's metric is named once per component, and the fingerprint lists them all
    for routes in TRAFFIC.values():
        assert len({r.metric for r in routes}) == len(routes)
    assert "websocket: ws push" in ROUTES
    assert "request_handler: GET /api/jobs" in ROUTES
    assert judge_load(1.0, 100.0).routes == ROUTES
    assert ws_url("http://127.0.0.1:8080/") == "ws://127.0.0.1:8080/ws"
    assert ws_url("https://etl.example") == "wss://etl.example/ws"


def test_pushes_late_for_the_cohort_fail_naming_the_push_latency() -> None:
    """+50% on every push of the inside cohort, on a host that gets busy halfway: FAIL on the
    push p50, with both sides' figures; the loss rate, the same on both sides, passes."""
    outside = _push_windows(_level, seed=1)
    inside = _push_windows(lambda w: 1.5 * _level(w), seed=2)
    result = judge(inside, outside, compared_with="the users just outside", outside=outside)
    assert result.verdict == "FAIL", result.reason
    assert " ms vs outside " in result.reason
    assert result.reason.startswith(f"FAIL p50 {PUSH_METRIC}: inside ")
    assert result.comparison is not None
    p50 = next(r for r in result.comparison.results if r.stat == "p50")
    assert p50.current is not None
    assert p50.baseline is not None
    assert p50.current == pytest.approx(1.5 * p50.baseline, rel=0.15)
    loss = next(r for r in result.comparison.results if r.stat == "error_rate")
    assert loss.verdict is Verdict.PASS, loss.line()
    assert any(line.startswith("FAIL p50 cohort ws push") for line in result.figures())


def test_pushes_lost_for_the_cohort_fail_on_the_loss_rate() -> None:
    """5 jobs in 50 of the inside cohort lose a push, every window (10%): FAIL on error_rate, the
    latency being alike."""
    outside = _push_windows(_level, seed=3)
    inside = _push_windows(_level, lost=lambda w: 5, seed=4)
    result = judge(inside, outside, compared_with="the users just outside", outside=outside)
    assert result.verdict == "FAIL", result.reason
    assert f"FAIL error_rate {PUSH_METRIC}: inside 10.0% vs outside 0%" in result.reason
    assert "p50" not in result.reason


def test_a_stray_lost_push_is_not_a_regression() -> None:
    """One lost push in one window of the inside cohort (2% of that window, 0.25% of the hold) is
    within the loss rate's +1pp floor and not significant: PASS."""
    outside = _push_windows(_level, seed=5)
    inside = _push_windows(_level, lost=lambda w: 1 if w == 3 else 0, seed=6)
    result = judge(inside, outside, compared_with="the users just outside", outside=outside)
    assert result.verdict == "PASS", result.reason


def test_healthy_pushes_pass_on_a_host_that_gets_busy() -> None:
    outside = _push_windows(_level, seed=7)
    inside = _push_windows(_level, seed=8)
    result = judge(inside, outside, compared_with="the users just outside", outside=outside)
    assert result.verdict == "PASS", result.reason


def test_the_stored_baseline_is_compared_per_component(tmp_path: Path) -> None:
    """`record_baseline` stores each component's traffic under its own names; a step compares
    only its component's part, and a part the baseline lacks is INCONCLUSIVE, not FAIL. (Unpaired,
    on a steady host: a host that gets busy halfway widens the stored comparison's floor.)"""
    path = tmp_path / "stored.json"
    loadp = judge_load(1.0, 100.0)
    for k in range(2):
        pushes = _push_windows(_steady, seed=10 + k)[PUSH_METRIC]
        name = stored_name("websocket", PUSH_METRIC)
        run = RunResult(
            metrics={name: MetricResult(name, pushes.windows)},
            load=loadp,
            started_at="",
            duration_s=8.0,
        )
        record(path, run, environment=Fingerprint(load=loadp.to_json()), name="rollout")
    stored = load(path)
    same = _push_windows(_steady, seed=20)
    got = against_stored(stored, {"inside": same, "outside": same}, loadp, component="websocket")
    assert {s: c.verdict for s, c in got.items()} == {
        "inside": Verdict.PASS,
        "outside": Verdict.PASS,
    }
    slow = _push_windows(lambda w: 2.0 * _steady(w), seed=21)
    worse = against_stored(stored, {"inside": slow}, loadp, component="websocket")
    assert worse["inside"].verdict is Verdict.FAIL
    assert worse["inside"].results[0].metric == "websocket: cohort ws push"
    # the logger's step: nothing of its traffic in this baseline
    other = {"cohort GET /api/jobs": same[PUSH_METRIC]}
    lacking = against_stored(stored, {"inside": other}, loadp, component="logger")
    assert lacking["inside"].verdict is Verdict.INCONCLUSIVE
    assert "not in the baseline" in lacking["inside"].results[0].reason


# -- one job's pushes -------------------------------------------------------------------------


def _probe(status: int = 200, body: object = None) -> tuple[PushProbe, httpx.Client, list[str]]:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(status, json=body if body is not None else {"status": "completed"})

    client = httpx.Client(base_url="http://target", transport=httpx.MockTransport(answer))
    probe = PushProbe("http://target", {"inside": "u1"}, timeout_s=2.0, job_source="rows=1")
    return probe, client, asked


def test_a_job_whose_pushes_all_arrived_gives_its_first_push_latency() -> None:
    probe, client, asked = _probe()
    side = probe.sides["inside"]
    job = _Job("j1", 0, sent=100.0)
    pushes = [_Push(100.004, "running", "pending"), _Push(100.020, "completed", "running")]
    kind, latency = probe._judge_job(client, side, job, pushes)
    assert kind == ""
    assert latency == pytest.approx(0.004)
    assert asked == []  # the terminal push says what happened: no REST call


def test_a_missing_running_push_is_a_lost_job() -> None:
    probe, client, asked = _probe()
    job = _Job("j1", 0, sent=100.0)
    kind, _ = probe._judge_job(
        client, probe.sides["inside"], job, [_Push(100.02, "completed", "running")]
    )
    assert kind == "lost"
    assert asked == []


def test_a_late_push_counts_as_lost() -> None:
    probe, client, _ = _probe()
    job = _Job("j1", 0, sent=100.0)
    late = [_Push(100.004, "running", "pending"), _Push(103.0, "completed", "running")]
    kind, _ = probe._judge_job(client, probe.sides["inside"], job, late)
    assert kind == "lost"  # 3 s after the POST, the timeout being 2 s


@pytest.mark.parametrize(
    ("rest", "pushes", "kind"),
    [
        ({"status": "completed"}, [], "lost"),  # finished, nothing pushed
        ({"status": "completed"}, ["running"], "lost"),  # the terminal push is missing
        ({"status": "running"}, ["running"], ""),  # a slow job: nothing missing yet
        ({"status": "pending"}, [], "no_transition"),  # never started within the timeout
        (None, [], "lost"),  # its status cannot be read: fail closed
    ],
)
def test_a_job_without_its_terminal_push_is_asked_for_over_rest(
    rest: dict[str, str] | None, pushes: list[str], kind: str
) -> None:
    probe, client, asked = _probe(200 if rest else 503, rest or {"code": "DATABASE_ERROR"})
    job = _Job("etlvws_x_i_7", 2, sent=100.0)
    got, latency = probe._judge_job(
        client, probe.sides["inside"], job, [_Push(100.003, s, "pending") for s in pushes]
    )
    assert got == kind
    assert asked == ["/api/jobs/etlvws_x_i_7"]
    assert (latency is not None) == (kind == "")


def test_the_subscription_rolls_on_as_acknowledged() -> None:
    """Ids are handed out only once the server acknowledged the subscribe that named them; pushes
    are kept per job with their receipt time; the other side's jobs are ignored."""
    probe, _, _ = _probe()
    side = probe.sides["inside"]
    side.waiting = ["a", "b"]
    side.sent_subscribes = 1
    ack = {"type": "connection_ack", "data": {"status": "subscribed"}}
    assert not side.ready
    probe._on_message(side, time.perf_counter(), ack)
    assert list(side.ready) == ["a", "b"]
    assert side.waiting == []
    mine = f"{side.prefix}_0"
    data = {"jobId": mine, "status": "completed", "previousStatus": "running"}
    update: dict[str, Any] = {"type": "job_status_update", "data": data}
    probe._on_message(side, 5.0, update)
    probe._on_message(side, 5.0, {**update, "data": {**update["data"], "jobId": "someone_else"}})
    assert list(side.pushes) == [mine]
    assert side.finished == {mine}
    assert side.pushes[mine][0].previous == "running"


def test_a_lost_acknowledgement_does_not_stall_the_side() -> None:
    """A server that loses (or delays) its subscribe answers: after half a second the ids are
    used anyway; an answer that echoes the subscription confirms it whatever the count says."""
    probe, _, _ = _probe()
    side = probe.sides["inside"]
    side.waiting, side.sent_subscribes, side.waiting_since = ["a"], 2, time.perf_counter()
    probe._assume_subscribed(side)
    assert side.waiting == ["a"]  # not yet
    side.waiting_since -= 1.0
    probe._assume_subscribed(side)
    assert list(side.ready) == ["a"]
    assert side.acked_subscribes == side.sent_subscribes == 2
    side.waiting, side.sent_subscribes = ["b", "c"], 4  # one answer lost on the way
    echo = {"status": "subscribed", "subscription": {"jobIds": ["a", "b", "c"]}}
    probe._on_message(side, 1.0, {"type": "connection_ack", "data": echo})
    assert list(side.ready) == ["a", "b", "c"]
    assert side.waiting == []
