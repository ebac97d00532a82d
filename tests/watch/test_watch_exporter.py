"""`etlverify watch --prometheus-port`: the exporter over real HTTP, its Grafana dashboard, and a
real Prometheus server (Debian's `prometheus`) scraping it on loopback."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from watch_support import free_port

from etlverify.watch.exporter import (
    METRICS,
    ExporterError,
    SourceFigures,
    WatchExporter,
    WatchSnapshot,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "etlverify-watch.json"
PROMETHEUS = shutil.which("prometheus")
HTTP_TIMEOUT_S = 5.0

#: the users' signals (issue 15), exported before ops/grafana/etlverify-watch.json has panels for
#: them (that file is another change's); a panel that charts one must take it out of this set
NOT_CHARTED_YET = frozenset(
    {
        "etlverify_watch_source_available",
        "etlverify_watch_source_requests",
        "etlverify_watch_source_errors",
        "etlverify_watch_source_error_rate_percent",
        "etlverify_watch_source_latency_ms",
        "etlverify_watch_trigger_source",
    }
)

# (metric name, sorted label pairs) -> value
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def snapshot(**changes: Any) -> WatchSnapshot:
    """A mid-watch snapshot with every figure known; `changes` replace fields."""
    snap = WatchSnapshot(
        watch_id="w-1",
        elapsed_s=754.5,
        planned_s=14400.0,
        windows=12,
        target_up=True,
        latency_ms={"p50": 3.25, "p95": 9.5},
        baseline_latency_ms={"p50": 3.0, "p95": 8.0},
        error_rate_pct=0.5,
        baseline_error_rate_pct=0.25,
        memory_pct=41.5,
        db_failures_per_min=0.0,
        triggers={"unavailability": "CLEAR", "error_rate_increase": "FIRED", "memory": "UNKNOWN"},
        notifications_failed=2,
        sources={
            "counters": SourceFigures(True, requests=1512, errors=3, error_rate_pct=0.2),
            "prometheus": SourceFigures(False),
            "probes": SourceFigures(True, 12, 0, 0.0, latency_ms=2.5),
        },
        decided_by={"error_rate_increase": "counters", "response_time_degradation": "probes"},
    )
    return dataclasses.replace(snap, **changes)


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def scrape(url: str) -> Scrape:
    """GET /metrics and parse it with prometheus_client's own parser; only gauges are allowed."""
    response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    out: Scrape = {}
    for family in text_string_to_metric_families(response.text):
        assert family.type == "gauge", family.name
        for sample in family.samples:
            out[key(sample.name, **sample.labels)] = sample.value
    return out


@pytest.fixture
def exporter() -> Iterator[WatchExporter]:
    """An exporter on a free loopback port, stopped after the test."""
    exp = WatchExporter(0)
    exp.start()
    yield exp
    exp.stop()


# --- the exporter over HTTP -----------------------------------------------------------------


def test_observe_publishes_every_figure(exporter: WatchExporter) -> None:
    exporter.observe(snapshot())
    got = scrape(exporter.url)
    w = {"watch": "w-1"}
    expected = {
        key("etlverify_watch_elapsed_seconds", **w): 754.5,
        key("etlverify_watch_planned_seconds", **w): 14400.0,
        key("etlverify_watch_windows", **w): 12.0,
        key("etlverify_watch_target_up", **w): 1.0,
        key("etlverify_watch_latency_ms", quantile="p50", series="current", **w): 3.25,
        key("etlverify_watch_latency_ms", quantile="p95", series="current", **w): 9.5,
        key("etlverify_watch_latency_ms", quantile="p50", series="baseline", **w): 3.0,
        key("etlverify_watch_latency_ms", quantile="p95", series="baseline", **w): 8.0,
        key("etlverify_watch_error_rate_percent", series="current", **w): 0.5,
        key("etlverify_watch_error_rate_percent", series="baseline", **w): 0.25,
        key("etlverify_watch_memory_percent", **w): 41.5,
        key("etlverify_watch_db_failures_per_minute", **w): 0.0,
        key("etlverify_watch_trigger_fired", trigger="unavailability", **w): 0.0,
        key("etlverify_watch_trigger_fired", trigger="error_rate_increase", **w): 1.0,
        key("etlverify_watch_notifications_failed", **w): 2.0,
        key("etlverify_watch_source_available", source="counters", **w): 1.0,
        key("etlverify_watch_source_available", source="prometheus", **w): 0.0,
        key("etlverify_watch_source_available", source="probes", **w): 1.0,
        key("etlverify_watch_source_requests", source="counters", **w): 1512.0,
        key("etlverify_watch_source_requests", source="probes", **w): 12.0,
        key("etlverify_watch_source_errors", source="counters", **w): 3.0,
        key("etlverify_watch_source_errors", source="probes", **w): 0.0,
        key("etlverify_watch_source_error_rate_percent", source="counters", **w): 0.2,
        key("etlverify_watch_source_error_rate_percent", source="probes", **w): 0.0,
        key("etlverify_watch_source_latency_ms", source="probes", quantile="p50", **w): 2.5,
        key("etlverify_watch_trigger_source", trigger="error_rate_increase", source="counters",
            **w): 1.0,
        key("etlverify_watch_trigger_source", trigger="response_time_degradation",
            source="probes", **w): 1.0,
    }  # fmt: skip
    unknown = key("etlverify_watch_trigger_fired", trigger="memory", **w)
    assert math.isnan(got.pop(unknown)), "an UNKNOWN trigger is exported as NaN"
    assert got == expected
    # every metric the module documents is exported by a full snapshot, and nothing else
    assert {name for name, _ in got} | {unknown[0]} == set(METRICS)


def test_nothing_before_the_first_snapshot_and_no_process_metrics(exporter: WatchExporter) -> None:
    # Its own registry: none of the global registry's process_* / python_* series of the watcher.
    assert scrape(exporter.url) == {}
    exporter.observe(snapshot())
    assert not [name for name, _ in scrape(exporter.url) if not name.startswith("etlverify_watch_")]


def test_none_removes_the_series_rather_than_exporting_zero(exporter: WatchExporter) -> None:
    exporter.observe(snapshot())
    assert key("etlverify_watch_memory_percent", watch="w-1") in scrape(exporter.url)

    exporter.observe(
        snapshot(
            elapsed_s=815.0,
            target_up=False,
            latency_ms={},
            baseline_latency_ms={"p95": 8.0},
            error_rate_pct=None,
            memory_pct=None,
            db_failures_per_min=math.nan,
            triggers={"unavailability": "FIRED"},
        )
    )
    got = scrape(exporter.url)
    w = {"watch": "w-1"}
    assert got[key("etlverify_watch_elapsed_seconds", **w)] == 815.0
    assert got[key("etlverify_watch_target_up", **w)] == 0.0
    names = {name for name, _ in got}
    assert "etlverify_watch_memory_percent" not in names
    assert "etlverify_watch_db_failures_per_minute" not in names  # NaN is no figure either
    assert [k for k in got if k[0] == "etlverify_watch_latency_ms"] == [
        key("etlverify_watch_latency_ms", quantile="p95", series="baseline", **w)
    ]
    assert [k for k in got if k[0] == "etlverify_watch_error_rate_percent"] == [
        key("etlverify_watch_error_rate_percent", series="baseline", **w)
    ]
    # a trigger no longer in the snapshot is gone, not frozen at its last state
    assert [(k, v) for k, v in got.items() if k[0] == "etlverify_watch_trigger_fired"] == [
        (key("etlverify_watch_trigger_fired", trigger="unavailability", **w), 1.0)
    ]


def test_label_values_round_trip(exporter: WatchExporter) -> None:
    odd = 'deploy "2026-12-07"\\blue\nnight'
    exporter.observe(snapshot(watch_id=odd))
    assert scrape(exporter.url)[key("etlverify_watch_windows", watch=odd)] == 12.0


def test_port_held_by_another_exporter_is_one_line_error(exporter: WatchExporter) -> None:
    second = WatchExporter(exporter.port)
    with pytest.raises(ExporterError) as caught:
        second.start()
    assert str(caught.value) == f"--prometheus-port {exporter.port}: address already in use"
    second.stop()  # never started: a no-op
    exporter.observe(snapshot())
    assert scrape(exporter.url)  # the first one is unharmed


def test_port_held_by_any_listener_is_one_line_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ExporterError) as caught:
            WatchExporter(port).start()
    assert str(caught.value) == f"--prometheus-port {port}: address already in use"


def test_stop_frees_the_port(exporter: WatchExporter) -> None:
    port = exporter.port
    assert exporter.url == f"http://127.0.0.1:{port}/metrics"
    exporter.stop()
    exporter.stop()  # twice is fine
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=HTTP_TIMEOUT_S)
    again = WatchExporter(port)
    again.start()
    try:
        again.observe(snapshot(watch_id="w-2"))
        assert key("etlverify_watch_windows", watch="w-2") in scrape(again.url)
    finally:
        again.stop()


# --- the Grafana dashboard ------------------------------------------------------------------

_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, keywords or label names)."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", bare):
        if bare[match.end() :].lstrip().startswith("(") or match.group().lower() in _PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_metric_name_parser() -> None:
    expr = (
        'sum by (watch) (rate(a_total{job="x",y=~"a{b}"}[5m])) / on(watch) group_left b_c '
        "* 1.5e3 > bool 2"
    )
    assert metric_names(expr) == {"a_total", "b_c"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_dashboard_is_an_importable_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 38  # Grafana 10+
    assert dashboard["uid"]
    assert dashboard["title"]
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] < pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine


def test_dashboard_watch_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "watch"]
    expected = "label_values(etlverify_watch_elapsed_seconds, watch)"
    assert variable["definition"] == expected
    assert variable["query"]["query"] == expected
    assert variable["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        names = metric_names(expr)
        assert names, f"{panel['title']}: no metric in {expr!r}"
        assert names <= set(METRICS), f"{panel['title']}: not exported: {names - set(METRICS)}"
        assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
        # every selector is narrowed to the chosen watch
        for name in names:
            for selector in re.findall(rf"(?<![\w:]){name}(?![\w:])\s*(\{{[^}}]*\}})?", expr):
                assert 'watch="$watch"' in selector, f"{panel['title']}: {expr!r}"
        used |= names
    expected = set(METRICS) - NOT_CHARTED_YET
    assert used == expected, (
        f"exported but not charted: {expected - used}; charted: {used - expected}"
    )


def test_dashboard_has_the_panels_the_watch_needs(dashboard: dict[str, Any]) -> None:
    by_metric: dict[str, set[str]] = {}
    for panel, target in _targets(dashboard):
        for name in metric_names(target["expr"]):
            by_metric.setdefault(name, set()).add(panel["type"])
    assert "state-timeline" in by_metric["etlverify_watch_trigger_fired"]
    assert "timeseries" in by_metric["etlverify_watch_latency_ms"]
    assert "timeseries" in by_metric["etlverify_watch_error_rate_percent"]
    (triggers,) = [p for p in dashboard["panels"] if p["title"] == "Rollback triggers"]
    mappings = json.dumps(triggers["fieldConfig"]["defaults"]["mappings"])
    assert all(word in mappings for word in ("CLEAR", "FIRED", "UNKNOWN", '"nan"'))


# --- a real Prometheus ----------------------------------------------------------------------


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server on PATH: apt-get install -y prometheus (Debian/Ubuntu)",
)
def test_real_prometheus_scrapes_the_exporter(tmp_path: Path, exporter: WatchExporter) -> None:
    assert PROMETHEUS is not None
    exporter.observe(snapshot(watch_id="prom-1", elapsed_s=123.25))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: etlverify-watch\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter.port}']\n",
        encoding="utf-8",
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30.0
    api = f"http://127.0.0.1:{port}/api/v1/query"

    def query(promql: str) -> list[dict[str, Any]]:
        response = httpx.get(api, params={"query": promql}, timeout=HTTP_TIMEOUT_S)
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_until(what: str, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"prometheus exited with {proc.returncode}:\n{_tail(log)}", pytrace=False
                )
            try:
                if ready():
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.25)
        pytest.fail(f"prometheus: no {what} within 30 s\n{_tail(log)}", pytrace=False)

    def value_is(promql: str, expected: float) -> bool:
        return [(r["metric"].get("watch"), float(r["value"][1])) for r in query(promql)] == [
            ("prom-1", expected)
        ]

    def ready() -> bool:
        # Starting, Prometheus already answers HTTP, with 503 "Service Unavailable" (not JSON)
        # until its storage is up (a CI run queried it then).
        return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=HTTP_TIMEOUT_S).is_success

    try:
        wait_until("/-/ready", ready)
        wait_until(
            "scraped etlverify_watch_elapsed_seconds == 123.25",
            lambda: value_is("etlverify_watch_elapsed_seconds", 123.25),
        )
        (fired,) = query('etlverify_watch_trigger_fired{trigger="error_rate_increase"}')
        assert fired["metric"]["watch"] == "prom-1"
        assert float(fired["value"][1]) == 1.0
        (unknown,) = query('etlverify_watch_trigger_fired{trigger="memory"}')
        assert math.isnan(float(unknown["value"][1]))
        assert value_is('etlverify_watch_latency_ms{series="baseline",quantile="p95"}', 8.0)

        # The next window: memory unknown. Prometheus must see the series end (stale), not a 0.
        exporter.observe(snapshot(watch_id="prom-1", elapsed_s=124.5, memory_pct=None))
        wait_until(
            "new elapsed value with the memory series gone",
            lambda: (
                value_is("etlverify_watch_elapsed_seconds", 124.5)
                and query("etlverify_watch_memory_percent") == []
            ),
        )
        (up,) = query('up{job="etlverify-watch"}')
        assert float(up["value"][1]) == 1.0
    finally:
        _stop(proc)
