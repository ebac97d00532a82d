"""Root cause first: failures folded into primary findings (`etlverify.report.causes`) and blocking
items pointing at them (`etlverify.report.verdict.fold_blocking`)."""

from __future__ import annotations

from etlverify.report.causes import Cause, FailureFact, diagnose, findings_of
from etlverify.report.summary import Finding, ItemRecord, Status, TestRecord
from etlverify.report.verdict import fold_blocking

DOWN = {
    "kind": "not-answering",
    "at": "2026-12-07T06:31:12Z",
    "at_epoch": 1_796_624_000.0,
    "check": "test_jobs",
    "detail": "GET /api/jobs got no answer",
    "requests": 412,
    "connections": 300,
}


def _fact(nodeid: str, kind: str, line: str, at: float, **kw: object) -> FailureFact:
    return FailureFact(nodeid, nodeid.rsplit("::", 1)[-1], kind, line, at, **kw)  # type: ignore[arg-type]


def test_one_cause_behind_many_symptoms_comes_first_and_counts_them() -> None:
    facts = [
        _fact(
            "t.py::test_route",
            "contract",
            "GET /nope answered HTTP 500",
            1.0,
            curl="curl -sS -i http://x/nope",
        ),
        _fact(
            "t.py::test_jobs",
            "transport",
            "GET /api/jobs: no response within 10 s",
            2.0,
            event=DOWN,
        ),
        *[
            _fact(f"t.py::test_later{i}", "blocked", "blocked: ...", 3.0 + i, event=DOWN)
            for i in range(27)
        ],
    ]
    causes = diagnose(facts)
    assert causes[0].kind == "not-answering"
    assert causes[0].sentence.startswith("the target stopped answering at")
    assert "after 412 requests over 300 connections, first seen in test_jobs" in causes[0].sentence
    assert "27 later check(s) could not run" in causes[0].sentence
    assert causes[0].consequences == 27
    assert causes[1].sentence == "test_route: GET /nope answered HTTP 500"
    assert causes[1].lines[-1] == "Reproduce with: curl -sS -i http://x/nope"
    assert len(causes) == 2


def test_non_json_bodies_are_one_finding_with_every_check() -> None:
    facts = [
        _fact(f"t.py::test_e{i}", "not-json", "did not answer JSON", float(i)) for i in range(5)
    ]
    (cause,) = diagnose(facts)
    assert cause.kind == "not-json"
    assert cause.sentence.startswith("error bodies are not JSON: 5 check(s)")
    assert len(cause.lines) == 5


def test_query_string_refusals_are_named() -> None:
    facts = [
        _fact(
            f"t.py::test_q{i}",
            "contract",
            "answered HTTP 400",
            float(i),
            curl=f"curl -sS 'http://x/api/jobs?limit={i}'",
        )
        for i in range(3)
    ]
    (cause,) = diagnose(facts)
    assert cause.kind == "query-string"
    assert "requests with a query string are refused" in cause.sentence


def test_parametrised_variants_failing_alike_are_one_finding() -> None:
    facts = [
        _fact(f"t.py::test_p[{i}]", "contract", "answered HTTP 500", float(i)) for i in range(4)
    ]
    (cause,) = diagnose(facts)
    assert len(cause.checks) == 4


def test_round_trip_through_json() -> None:
    (cause,) = diagnose([_fact("t.py::test_x", "timeout", "ran out of time", 1.0)])
    assert Cause.from_json(cause.to_json()) == cause
    fact = _fact("t.py::test_x", "blocked", "blocked", 1.0, event=DOWN, items=("a.b",))
    assert FailureFact.from_json(fact.to_json()) == fact


def test_blocking_items_point_at_their_findings() -> None:
    facts = [
        _fact("t.py::test_jobs", "transport", "no response", 2.0, event=DOWN),
        _fact("t.py::test_ws", "blocked", "blocked", 3.0, event=DOWN),
    ]
    causes = diagnose(facts)
    assert findings_of(causes) == {"t.py::test_jobs": [1], "t.py::test_ws": [1]}
    item = ItemRecord(
        "post.x", "s", "h", "Verify WebSocket real-time updates", "automated", Status.FAILED,
        tests=(TestRecord("t.py::test_ws", "failed", "long failure text"),),
    )  # fmt: skip
    (folded,) = fold_blocking([Finding("item", "post.x", "failed - long")], [item], causes)
    assert (
        folded.text == "failed - Verify WebSocket real-time updates (1 check(s); primary finding 1)"
    )


REFUSED = (
    'performance: POST /api/jobs answered 400 \'{"status":"error","code":"validation_error",'
    '"message":"target_config: unknown sink"}\'; the job read under load could not be created'
)


def test_http_answers_are_filed_under_http_never_as_lost_connections() -> None:
    facts = [
        _fact("t.py::test_a", "http", REFUSED, 1.0),
        # as an older classifier filed it: a TargetError without a kind was "transport"
        _fact("t.py::test_b", "transport", REFUSED, 2.0),
        _fact("t.py::test_c", "http", "login failed: HTTP 401 application/json: {}", 3.0),
        _fact("t.py::test_d", "transport", "GET /api/jobs: no response within 10 s", 4.0),
        _fact(
            "t.py::test_e",
            "transport",
            "GET /x: timed out on a keep-alive connection reused after an HTTP 400 answer",
            5.0,
        ),
    ]
    causes = {c.kind: c for c in diagnose(facts)}
    assert set(causes) == {"http", "transport"}
    http = causes["http"]
    assert http.checks == ("t.py::test_a", "t.py::test_b", "t.py::test_c")
    assert http.sentence == (
        "3 check(s) got an HTTP answer they could not go on from (HTTP 400 "
        "validation_error x2, HTTP 401; first in test_a)"
    )
    lost = causes["transport"]
    assert lost.checks == ("t.py::test_d", "t.py::test_e")
    assert "lost their connection" in lost.sentence
    assert not any("validation_error" in line for line in lost.lines)


def test_a_refused_request_that_blocks_a_section_is_one_finding_first() -> None:
    block = {
        "kind": "section-blocked",
        "section": "performance",
        "request": "POST /api/jobs",
        "status": 400,
        "code": "validation_error",
        "message": "target_config: unknown sink",
        "check": "test_response_times_within_baseline",
        "at_epoch": 1_796_624_010.0,
    }
    facts = [
        # a contract violation found before it, and one after
        _fact("t.py::test_route", "contract", "GET /nope answered HTTP 500", 1.0),
        *[
            _fact(f"perf.py::test_p{i}", "section-blocked", "refused", 10.0 + i, event=block)
            for i in range(8)
        ],
        _fact("t.py::test_late", "contract", "GET /late answered HTTP 500", 30.0),
    ]
    causes = diagnose(facts)
    assert causes[0].kind == "section-blocked"
    assert causes[0].sentence == (
        "job creation refused: POST /api/jobs answered 400 validation_error (target_config: "
        "unknown sink); the performance section (8 checks) could not run"
    )
    assert causes[0].first_check == "test_response_times_within_baseline"
    assert causes[0].consequences == 7
    assert [c.kind for c in causes[1:]] == ["contract", "contract"]
