"""Checklist 2.1 (logger system testing) and the logger part of 3.1 (rollout raised to 50%).

With `new_logger_system` at 25%, requests from exposed and unexposed users must both produce
contract log lines (section 9): TEXT or JSON as configured, rotated by size without a split or lost
line, streamed to WebSocket clients, and without a gross latency cost.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from .rollout import (
    LEVELS,
    TERMINAL,
    check_latency_impact,
    check_partial_rollback,
    exposed_user,
    has_cid,
    line_has_correlation_id,
    new_job_id,
    parse_log_line,
    subscribe_clean,
    unexposed_user,
)

if TYPE_CHECKING:
    from pathlib import Path

    from .rollout import LogWatcher, RolloutChecker

FLAG = "new_logger_system"
ITEM = "deploy.phase2.2_1_logger_testing"

pytestmark = [pytest.mark.component, pytest.mark.logger, pytest.mark.deploy]


def _error_request(api: Any, user: str) -> tuple[str, Any]:
    """A 404 for an unknown job, as `user`, with a correlation id of our own: (id, response)."""
    cid = uuid.uuid4().hex[:16]
    resp = api.get(
        f"/api/jobs/etlv_missing_{uuid.uuid4().hex[:8]}",
        headers={"X-User-Id": user, "X-Correlation-ID": cid},
    )
    return cid, resp


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.enable_logger_feature")
def test_logger_flag_at_25_percent_follows_fnv1a(rollout: RolloutChecker) -> None:
    """2.1 Enable new logger system feature flag (25% rollout): exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_log_output")
def test_log_lines_have_contract_format(
    rollout: RolloutChecker, server_log: LogWatcher, etl_api: Any, etl_expect: Any
) -> None:
    """2.1 Monitor log output for new format: every new line is a contract TEXT or JSON line."""
    rollout.set(FLAG, 25)
    server_log.mark()
    cids = []
    for user in (exposed_user(25), unexposed_user(25)):
        cid, resp = _error_request(etl_api, user)
        etl_expect.status(resp, 404)
        cids.append(cid)
    for cid in cids:
        line = server_log.wait_for(has_cid(cid), timeout=5.0)
        etl_expect.that(
            line is not None,
            what="the error answer for an exposed and an unexposed user is logged",
            expected=f"a line in {server_log.path.name} with correlationId={cid}",
            got="no such line within 5 s",
        )
    lines = server_log.lines()
    bad = [ln for ln in lines if parse_log_line(ln) is None]
    etl_expect.that(
        not bad,
        what="every new log line has the contract section 9 format",
        expected="`[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [Component] message | k=v` or a JSON object "
        "with timestamp, level, component, message, context",
        got=f"{len(bad)} of {len(lines)} lines malformed, first: {bad[:3]!r}",
    )


@pytest.mark.monitoring
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_log_output")
def test_log_format_switch_takes_effect(
    rollout: RolloutChecker,
    server_log: LogWatcher,
    etl_config: Any,
    etl_api: Any,
    etl_expect: Any,
) -> None:
    """2.1 Monitor log output for new format: switching logging.format gives the other format."""
    rollout.set(FLAG, 25)
    current = str(etl_config.read().get("logging", {}).get("format", "TEXT")).upper()
    target = "TEXT" if current == "JSON" else "JSON"
    etl_config.update({"logging": {"format": target}})
    server_log.mark()
    cid, resp = _error_request(etl_api, exposed_user(25))
    etl_expect.status(resp, 404)
    line = server_log.wait_for(lambda ln: line_has_correlation_id(ln, cid), timeout=5.0)
    if line is None:
        pytest.skip(
            f"no line with correlationId={cid} after switching logging.format to {target}: the "
            "target may apply the format only at restart (contract 8 hot-reloads level and "
            "rate limits only)"
        )
    parsed = parse_log_line(line)
    etl_expect.that(
        parsed is not None and parsed["format"] == target,
        what=f"after logging.format={target} the error is logged as a {target} line",
        expected=f"a contract {target} line",
        got=line[:300],
    )
    if target == "JSON" and parsed is not None:
        obj = json.loads(line)
        etl_expect.that(
            obj["level"] in LEVELS and obj["context"].get("correlationId") == cid,
            what="the JSON line carries the level and the correlation id in its context",
            expected=f"level in {LEVELS}, context.correlationId == {cid}",
            got=f"level={obj.get('level')!r}, context={obj.get('context')!r}",
        )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.log_rotation_works")
def test_log_rotation_keeps_every_line_whole(
    rollout: RolloutChecker,
    server_log: LogWatcher,
    etl_config: Any,
    etl_api: Any,
    etl_expect: Any,
) -> None:
    """2.1 Verify log file rotation works: `.1` appears, no line lost or split, sizes bounded."""
    max_size, backups = 4096, 3
    rollout.set(FLAG, 25)
    etl_config.update({"logging": {"max_file_size": max_size, "max_backup_files": backups}})
    server_log.mark()
    users = (exposed_user(25), unexposed_user(25))
    cids: list[str] = []
    deadline = time.monotonic() + 15.0
    # Two rotations: the middle file is written wholly under the new limit, and the file we
    # started in is still among the backups.
    while time.monotonic() < deadline and len(server_log.chain()) < 3:
        cid, resp = _error_request(etl_api, users[len(cids) % 2])
        etl_expect.status(resp, 404)
        cids.append(cid)
        if len(cids) % 10 == 0:
            time.sleep(0.05)
    if len(server_log.chain()) < 2:
        pytest.skip(
            f"no rotation after {len(cids)} error lines with logging.max_file_size={max_size}: "
            "the target may apply logging sizes only at restart (contract 8 hot-reloads level "
            "and rate limits only)"
        )
    for cid in cids[-1:]:
        server_log.wait_for(has_cid(cid), timeout=5.0)
    chain = server_log.chain()
    log_path: Path = server_log.path
    problems: list[str] = []
    if len(chain) < 3:
        problems.append(f"only {len(chain) - 1} rotation(s) after {len(cids)} error lines")
    for i, f in enumerate(chain[:-1]):
        data = f.read_bytes()
        if data and not data.endswith(b"\n"):
            problems.append(f"{f.name} ends inside a line: {data[-80:]!r}")
        # the first file was started under the old limit
        if i > 0 and len(data) > max_size and data.count(b"\n") > 1:
            problems.append(f"{f.name} is {len(data)} bytes, over max_file_size {max_size}")
    lines = server_log.lines()
    bad = [ln for ln in lines if parse_log_line(ln) is None]
    if bad:
        problems.append(f"{len(bad)} malformed (split?) lines, first: {bad[:2]!r}")
    missing = [c for c in cids if sum(line_has_correlation_id(ln, c) for ln in lines) != 1]
    if missing:
        problems.append(
            f"{len(missing)} of {len(cids)} error lines lost or duplicated: {missing[:3]}"
        )
    beyond = [p.name for p in log_path.parent.glob(f"{log_path.name}.*") if _beyond(p, backups)]
    if beyond:
        problems.append(f"backups beyond max_backup_files={backups} kept: {sorted(beyond)}")
    etl_expect.that(
        not problems,
        what="size rotation moves whole lines and keeps max_backup_files",
        expected=f"{log_path.name}.1 created, every line whole and in exactly one file, "
        f"no file over {max_size} bytes, at most {backups} backups",
        got="; ".join(problems),
    )


def _beyond(path: Path, backups: int) -> bool:
    suffix = path.name.rsplit(".", 1)[-1]
    return suffix.isdigit() and int(suffix) > backups


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.log_streaming_functionality")
def test_job_log_messages_stream_over_websocket(
    rollout: RolloutChecker, etl_ws: Any, etl_jobs: Any, etl_expect: Any
) -> None:
    """2.1 Check log streaming functionality: a job's log lines arrive as job_log_message."""
    rollout.set(FLAG, 25)
    job_id = new_job_id("logstream")
    ws = etl_ws()
    subscribe_clean(
        ws,
        job_ids=[job_id],
        message_types=["job_log_message", "job_status_update"],
        include_system=False,
    )
    etl_jobs.create(profile="quick", job_id=job_id)

    def done(msg: dict[str, Any]) -> bool:
        data = msg.get("data") or {}
        return msg.get("type") == "job_status_update" and data.get("status") in TERMINAL

    messages = ws.collect(until=done, timeout=30.0)
    logs = [m for m in messages if m.get("type") == "job_log_message"]
    etl_expect.that(
        bool(messages) and done(messages[-1]),
        what=f"job {job_id} reaches a terminal status on the WebSocket within 30 s",
        expected="a job_status_update with status completed/failed/cancelled",
        got=f"{len(messages)} messages, last: {messages[-1] if messages else None!r}",
    )
    etl_expect.that(
        bool(logs),
        what=f"log lines of job {job_id} are streamed",
        expected="at least one job_log_message for the job",
        got=f"types seen: {sorted({str(m.get('type')) for m in messages})}",
    )
    bad = []
    for msg in logs:
        data = msg.get("data") or {}
        if not (
            data.get("jobId") == job_id
            and data.get("level") in LEVELS
            and isinstance(data.get("component"), str)
            and isinstance(data.get("message"), str)
            and isinstance(data.get("timestamp"), str)
            and isinstance(data.get("context"), dict)
        ):
            bad.append(msg)
    etl_expect.that(
        not bad,
        what="job_log_message data has the contract section 10 fields",
        expected=f"jobId={job_id}, level in {LEVELS}, component, message, timestamp, context",
        got=repr(bad[:2]),
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.log_streaming_functionality")
def test_recent_log_lines_served_over_http(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any
) -> None:
    """2.1 Check log streaming functionality: `GET /api/logs` serves the line of a fresh error."""
    rollout.set(FLAG, 25)
    cid, resp = _error_request(etl_api, exposed_user(25))
    etl_expect.status(resp, 404)
    found: Any = None
    last: Any = None
    for _ in range(50):
        last = etl_api.get("/api/logs", params={"lines": 200})
        if last.status_code == 404:
            pytest.skip("target has no GET /api/logs (not in the contract's route list)")
        etl_expect.status(last, 200)
        entries = _log_entries(last.json())
        found = next((e for e in entries if cid in json.dumps(e)), None)
        if found is not None:
            break
        time.sleep(0.1)
    etl_expect.that(
        found is not None,
        what="GET /api/logs includes the line of an error answered a moment ago",
        expected=f"an entry with correlationId {cid}",
        got="no such entry within 5 s",
        resp=last,
    )
    etl_expect.that(
        isinstance(found, dict) and found.get("level") in LEVELS and "message" in found,
        what="a /api/logs entry has level and message",
        expected=f"level in {LEVELS}, message",
        got=repr(found)[:300],
        resp=last,
    )


def _log_entries(body: Any) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        for key in ("logs", "lines", "entries"):
            if isinstance(body.get(key), list):
                return list(body[key])
    return []


@pytest.mark.performance
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.monitor_performance_impact")
def test_logger_flag_has_no_gross_latency_cost(
    rollout: RolloutChecker, etl_api: Any, etl_expect: Any, record_metric: Any
) -> None:
    """2.1 Monitor performance impact: health latency with the logger flag on vs off."""
    check_latency_impact(
        rollout, etl_api, etl_expect, record_metric, FLAG, path="/api/health", label="logger"
    )


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist(f"{ITEM}.rollback_issues_detected")
def test_partial_rollback_of_logger(
    rollout: RolloutChecker, etl_ops: Any, etl_expect: Any, etl_deploy_root: Path
) -> None:
    """2.1 Rollback if issues detected: `rollback.sh partial logger` turns exactly that flag off."""
    check_partial_rollback(rollout, etl_ops, etl_expect, etl_deploy_root, "logger")


@pytest.mark.functional
@pytest.mark.destructive
@pytest.mark.checklist("deploy.phase3.3_1_gradual_feature.increase_logger_rollout")
def test_logger_rollout_raised_to_50_percent(rollout: RolloutChecker) -> None:
    """3.1 Increase logger system rollout to 50%: 25% then 50%, exposure follows FNV-1a."""
    rollout.enable(FLAG, 25)
    rollout.enable(FLAG, 50)
