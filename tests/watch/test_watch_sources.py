"""Users' signals of a watch without a target: counter deltas and restarts, the Prometheus source
over `httpx.MockTransport`, the ``--analysis`` file, choosing the deciding source, the
"not observable" statement and the progress line."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlverify.baseline.triggers import TriggerConfig, TriggerResult, TriggerState
from etlverify.watch.progress import compact_duration, progress_line
from etlverify.watch.signals import best_source, judge_users, observability, source_totals
from etlverify.watch.sources import (
    DEFAULT_QUERIES,
    AnalysisError,
    PrometheusSource,
    SourceWindow,
    counter_window,
    load_analysis,
    parse_metrics_option,
    probes_window,
    source_windows,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def sample(t: float, total: float | None, errors: float | None, ok: bool = True) -> dict[str, Any]:
    return {"t_s": t, "ok": ok, "requests_total": total, "requests_errors": errors}


# --- the target's request counters --------------------------------------------------------------


def test_counter_deltas_run_from_the_previous_windows_last_sample() -> None:
    previous = [sample(0, 100, 1), sample(15, 160, 1)]
    mine = [sample(30, 220, 2), sample(45, 300, 11)]
    sw = counter_window(previous, mine, watch_requests=6)
    assert (sw.available, sw.requests, sw.errors, sw.restarts) == (True, 140, 10, 0)
    assert sw.span_s == 30
    assert sw.error_rate_pct == pytest.approx(100 * 10 / 140)
    assert sw.watch_requests == 6


def test_a_counter_that_goes_down_is_a_restart_never_a_negative_rate() -> None:
    sw = counter_window([sample(0, 5000, 40)], [sample(15, 5100, 41), sample(30, 12, 3)])
    assert sw.restarts == 1
    assert sw.requests == 100 + 12
    assert sw.errors == 1 + 3
    assert sw.note is not None
    assert "went down 1 time(s) (the target restarted)" in sw.note


def test_server_errors_are_preferred_to_every_error_status() -> None:
    """A client's 404s and 429s are not the deployment failing: where the target counts 5xx
    apart (the reference's `server_errors`), those are the errors; else the contract's `errors`."""

    def both(t: float, total: float, errors: float, server: float) -> dict[str, Any]:
        return {**sample(t, total, errors), "requests_server_errors": server}

    sw = counter_window([both(0, 100, 10, 1)], [both(15, 200, 60, 3)])
    assert (sw.requests, sw.errors, sw.error_kind) == (100, 2, "5xx")
    sw = counter_window([sample(0, 100, 10)], [sample(15, 200, 60)])
    assert (sw.requests, sw.errors, sw.error_kind) == (100, 50, "4xx+5xx")


def test_a_target_without_request_counters_says_so() -> None:
    sw = counter_window([], [sample(0, None, None), sample(15, None, None)])
    assert not sw.available
    assert sw.note is not None
    assert "exports no request counters" in sw.note
    assert not counter_window([], [sample(0, None, None, ok=False)]).available
    first = counter_window([], [sample(0, 10, 0)])
    assert not first.available  # one sample: no delta yet


def test_probes_window_counts_every_watch_metric() -> None:
    metrics = {
        "watch GET /api/health": {"count": 11, "errors": 1, "p50_ms": 2.5},
        "watch POST /api/jobs": {"count": 1, "errors": 0, "p50_ms": 9.0},
    }
    sw = probes_window(metrics, 60.0, "watch GET /api/health")
    assert (sw.requests, sw.errors, sw.latency_ms) == (13, 1, 2.5)


def test_source_windows_round_trip_through_a_window_record() -> None:
    sw = counter_window([sample(0, 0, 0)], [sample(10, 50, 5)])
    record = {"index": 3, "sources": {"counters": sw.to_json()}}
    got = source_windows([json.loads(json.dumps(record))])
    assert got == {"counters": [sw]}


# --- Prometheus -------------------------------------------------------------------------------


def prom(handler: Callable[[str], httpx.Response]) -> PrometheusSource:
    def respond(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query"
        return handler(request.url.params["query"])

    return PrometheusSource(
        "http://prom.invalid:9090", timeout_s=1.0, transport=httpx.MockTransport(respond)
    )


def vector(value: str | None) -> httpx.Response:
    result = [] if value is None else [{"metric": {}, "value": [1.0, value]}]
    return httpx.Response(
        200, json={"status": "success", "data": {"resultType": "vector", "result": result}}
    )


def test_prometheus_window_from_rate_ratio_and_quantile() -> None:
    seen: list[str] = []

    def handler(query: str) -> httpx.Response:
        seen.append(query)
        if query.startswith("sum(rate("):
            return vector("5")
        if query.startswith("(sum(rate("):
            return vector("0.25")
        return vector("0.0031")

    sw = prom(handler).window(60.0)
    assert (sw.available, sw.requests, sw.errors, sw.latency_ms) == (True, 300, 75, 3.1)
    assert sw.quantile == "p50"
    # the range is fitted to the window, the quantile filled in
    assert all("[60s]" in q for q in seen), seen
    assert "$" not in "".join(seen)
    assert seen[2].startswith("histogram_quantile(0.5,")
    # a 2.5 s window is written in milliseconds (PromQL durations are whole units)
    prom(handler).window(2.5)
    assert "[2500ms]" in seen[-1]


def test_no_traffic_is_zero_requests_not_an_error() -> None:
    def handler(query: str) -> httpx.Response:
        return vector("0") if query.startswith("sum(rate(") else vector("NaN")

    sw = prom(handler).window(60.0)
    assert (sw.available, sw.requests, sw.errors, sw.latency_ms) == (True, 0, 0, None)
    assert not sw.has_errors()


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            httpx.Response(400, json={"status": "error", "errorType": "bad_data",
                                      "error": "1:5: parse error: unexpected <by>\nmore"}),
            "request_rate query: Prometheus answered HTTP 400: 1:5: parse error: unexpected <by>",
        ),
        (httpx.Response(200, text="<html>"), "answered HTTP 200 without JSON"),
        (
            httpx.Response(200, json={"status": "success", "data": {"resultType": "vector",
             "result": [{"metric": {"a": "1"}, "value": [1, "1"]},
                        {"metric": {"a": "2"}, "value": [1, "2"]}]}}),
            "request_rate query returned 2 series, expected one (aggregate it",
        ),
        (vector(None), "request_rate query returned no series"),
    ],
)  # fmt: skip
def test_a_query_problem_is_one_line_and_the_source_unavailable(
    response: httpx.Response, expected: str
) -> None:
    sw = prom(lambda _: response).window(60.0)
    assert not sw.available
    assert sw.note is not None
    assert expected in sw.note
    assert "\n" not in sw.note
    assert "Traceback" not in sw.note


def test_unreachable_or_slow_prometheus_is_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    for transport, expected in (
        (refuse, "cannot reach Prometheus at http://p.invalid: [Errno 111] Connection refused"),
        (slow, "did not answer within 1 s"),
    ):
        source = PrometheusSource(
            "http://p.invalid", timeout_s=1.0, transport=httpx.MockTransport(transport)
        )
        sw = source.window(60.0)
        assert not sw.available
        assert sw.note is not None
        assert expected in sw.note
        assert source.check() == sw.note


def test_analysis_file_overrides_queries(tmp_path: Path) -> None:
    assert load_analysis(None) == DEFAULT_QUERIES
    path = tmp_path / "analysis.toml"
    path.write_text(
        "[prometheus]\nrequest_rate = 'sum(rate(http_requests_total{job=\"etl\"}[$window]))'\n"
        "quantile = 0.95\n"
    )
    queries = load_analysis(path)
    assert queries.request_rate.startswith("sum(rate(http_requests_total{job=")
    assert queries.error_ratio == DEFAULT_QUERIES.error_ratio
    assert queries.label == "p95"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[prometheus]\nlatncy = 'x'\n", "unknown key 'latncy'; did you mean 'latency'?"),
        ("[promethus]\n", "unknown key 'promethus'; did you mean 'prometheus'?"),
        ("[prometheus]\nquantile = 0.7\n", "expected one of 0.5, 0.9, 0.95, 0.99, got 0.7"),
        ("[prometheus]\nlatency = ''\n", "latency: expected a PromQL string"),
        ("[prometheus\n", "invalid TOML"),
    ],
)  # fmt: skip
def test_a_bad_analysis_file_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "a.toml"
    path.write_text(text)
    with pytest.raises(AnalysisError) as info:
        load_analysis(path)
    assert str(info.value).startswith(f"--analysis {path}: ")
    assert message in str(info.value)


def test_metrics_option() -> None:
    assert parse_metrics_option([]) is None
    assert parse_metrics_option(["prometheus=http://127.0.0.1:9090/"]) == "http://127.0.0.1:9090"
    for bad, message in (
        ("graphite=http://x", "expected prometheus=URL"),
        ("prometheus=127.0.0.1:9090", "starting with http:// or https://"),
    ):
        with pytest.raises(AnalysisError, match=message):
            parse_metrics_option([bad])


# --- choosing the source and judging on it ----------------------------------------------------


def users(requests: int, errors: int, source: str = "counters", **kw: Any) -> SourceWindow:
    return SourceWindow(source, True, 60.0, requests=requests, errors=errors, **kw)


def probe_results() -> tuple[TriggerResult, ...]:
    return (
        TriggerResult("error_rate_increase", TriggerState.CLEAR, "probes: 0 errors"),
        TriggerResult("response_time_degradation", TriggerState.CLEAR, "probes: fine"),
        TriggerResult("memory_sustained", TriggerState.CLEAR, "fine"),
    )


def test_the_server_counters_decide_when_users_fail_and_the_probes_do_not() -> None:
    probes = [SourceWindow("probes", True, 60.0, requests=12, errors=0, latency_ms=2.0)]
    base = {"counters": [users(300, 0)] * 5, "probes": probes * 5}
    span = {"counters": [users(300, 150)] * 2, "probes": probes * 2}
    assert best_source(base, span, "errors") == "counters"
    assert best_source(base, span, "latency") == "probes"
    got = {t.name: t for t in judge_users(probe_results(), base, span, TriggerConfig())}
    err = got["error_rate_increase"]
    assert err.fired
    assert err.decided_by == "server counters"
    assert err.line().startswith(
        "FIRED rollback trigger error_rate_increase (source: server counters): "
    )
    assert "users (server counters): 50.00% errors (300) vs baseline 0.00%" in err.reason
    assert got["response_time_degradation"].decided_by == "watch probes"
    assert got["memory_sustained"].decided_by is None
    # the same users without the fault: clear
    calm = {"counters": [users(300, 1)] * 2, "probes": probes * 2}
    assert not judge_users(probe_results(), base, calm, TriggerConfig())[0].fired


def test_prometheus_outranks_the_counters_and_decides_latency() -> None:
    def prom_w(p50: float) -> SourceWindow:
        return users(300, 0, "prometheus", latency_ms=p50)

    base = {"prometheus": [prom_w(3.0 + i / 10) for i in range(5)], "counters": [users(300, 0)] * 5}
    span = {"prometheus": [prom_w(210.0 + i) for i in range(3)], "counters": [users(300, 0)] * 3}
    got = {t.name: t for t in judge_users(probe_results(), base, span, TriggerConfig())}
    assert got["response_time_degradation"].fired, got["response_time_degradation"]
    assert got["response_time_degradation"].decided_by == "Prometheus"
    assert got["error_rate_increase"].decided_by == "Prometheus"
    assert not got["error_rate_increase"].fired


def test_a_source_without_baseline_windows_does_not_decide() -> None:
    base = {"counters": [users(300, 0)] * 5}
    span = {"prometheus": [users(300, 150, "prometheus")], "counters": [users(300, 0)]}
    assert best_source(base, span, "errors") == "counters"


def test_the_log_decides_errors_when_it_is_the_best_there_is() -> None:
    def log(lines: int) -> SourceWindow:
        return SourceWindow("log", True, 60.0, errors=lines)

    base = {"log": [log(0)] * 5}
    got = judge_users(probe_results(), base, {"log": [log(4), log(5)]}, TriggerConfig())
    assert got[0].fired
    assert got[0].decided_by == "the deployment's log"
    assert "9 error line(s) in 120 s (4.50/min) vs baseline 0.00/min" in got[0].reason
    assert not judge_users(probe_results(), base, {"log": [log(1)] * 2}, TriggerConfig())[0].fired


def test_not_observable_says_why_in_one_line() -> None:
    windows = {
        "counters": [
            SourceWindow("counters", False, note="the target exports no request counters")
        ],
        "probes": [SourceWindow("probes", True, 60.0, requests=12, errors=0)],
    }
    errors, latency = observability(windows, prometheus_url=None, deploy_root=None)
    assert not errors.observable
    assert errors.reason == (
        "users' error rate not observable: the target exports no request counters and no "
        "--metrics source was given"
    )
    assert not latency.observable
    seen, _ = observability(
        {**windows, "counters": [users(10, 0)]}, prometheus_url=None, deploy_root=None
    )
    assert seen.observable
    assert seen.source == "counters"
    totals = source_totals({**windows, "counters": [users(10, 1), users(30, 0)]})
    assert totals["counters"]["requests"] == 40
    assert totals["counters"]["error_rate_pct"] == 2.5


# --- progress ---------------------------------------------------------------------------------


def test_progress_line() -> None:
    record = {
        "metrics": {"watch GET /api/health": {"count": 12, "errors": 0}},
        "sources": {
            "counters": users(1512, 0).to_json(),
            "log": SourceWindow("log", True, 60.0, errors=0).to_json(),
            "probes": SourceWindow("probes", True, 60.0, requests=12, errors=0).to_json(),
        },
    }
    clear = tuple(
        TriggerResult(t.name, TriggerState.CLEAR, "", decided_by="server counters")
        for t in probe_results()
    )
    line = progress_line(
        elapsed_s=360, planned_s=4 * 3600, record=record, triggers=clear, baseline=None,
        prometheus=False,
    )  # fmt: skip
    assert line == (
        "watch 6m/4h: users 1,512 req, 0.0% err (server counters); log 0 error line(s); "
        "probes 12 ok; triggers clear"
    )
    fired = (TriggerResult("error_rate_increase", TriggerState.FIRED, "", decided_by="Prometheus"),)
    line = progress_line(
        elapsed_s=60, planned_s=600, record=record, triggers=fired, baseline=(1, 5),
        prometheus=True,
    )  # fmt: skip
    assert line.endswith("FIRED: error_rate_increase (Prometheus)")
    bare = {
        "metrics": {"watch GET /api/health": {"count": 11, "errors": 1}},
        "sources": {"counters": SourceWindow("counters", False, note="the target exports no "
                                             "request counters").to_json()},
    }  # fmt: skip
    line = progress_line(
        elapsed_s=60, planned_s=600, record=bare, triggers=probe_results(), baseline=(1, 5),
        prometheus=False,
    )  # fmt: skip
    assert line == (
        "watch 1m/10m: users not observable (no request counters, no --metrics); "
        "probes 11 ok, 1 failed; baseline 1/5 windows; absolute triggers clear"
    )
    assert compact_duration(4320) == "1h12m"
