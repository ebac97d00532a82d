"""Rollback procedures: immediate actions, full and partial rollback (contract sections 7, 11).

Checklist "Rollback Triggers and Procedures / Rollback Procedures". Every test here changes the
deployment (flags, service restarts) and is destructive. `rollback full` restarts the service, so it
runs once for the module (`full_rollback` fixture) plus once more for the restore from a backup.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .support import COMPONENT_FLAGS, FLAG_NAMES, file_sha256, last_line, read_json, wait_until

if TYPE_CHECKING:
    from .conftest import FullRollback

pytestmark = [
    pytest.mark.post_deploy,
    pytest.mark.rollback,
    pytest.mark.functional,
    pytest.mark.destructive,
]

DISABLE_FLAGS = "rollback.rollback_procedures.immediate_actions.disable_feature_flags"
RESTART = "rollback.rollback_procedures.immediate_actions.restart_service"
RECOVERY = "rollback.rollback_procedures.immediate_actions.monitor_recovery"
RUN_FULL = "rollback.rollback_procedures.full_rollback.run_rollback"
RESTORE = "rollback.rollback_procedures.full_rollback.restore_backup_binary"
STABILITY = "rollback.rollback_procedures.full_rollback.stability"
RUN_PARTIAL = "rollback.rollback_procedures.partial_rollback.run_rollback"
REDUCED = "rollback.rollback_procedures.partial_rollback.monitor_reduced_functionality"

USERS = ("alice", "bob", "user1", "user2", "etlverify")


def _served_flags(etl_api: Any, etl_expect: Any) -> dict[str, Any]:
    resp = etl_api.get("/api/flags")
    etl_expect.status(resp, 200)
    return dict(
        etl_expect.json_fields(resp, {"flags": dict, "rollout_percentages": dict, "sha256": str})
    )


def _header_flags(etl_api: Any, user: str) -> tuple[str | None, Any]:
    resp = etl_api.get("/api/health", headers={"X-User-Id": user})
    return resp.headers.get("x-feature-flags"), resp


def _all_on(etl_flags: Any) -> None:
    etl_flags.set(dict.fromkeys(FLAG_NAMES, True), dict.fromkeys(FLAG_NAMES, 100))


@pytest.mark.checklist(DISABLE_FLAGS)
def test_disable_all_feature_flags(etl_api: Any, etl_expect: Any, etl_flags: Any) -> None:
    """Disable all new feature flags: all off/0 served, X-Feature-Flags empty."""
    _all_on(etl_flags)
    header, resp = _header_flags(etl_api, "alice")
    active = {n.strip() for n in (header or "").split(",") if n.strip()}
    etl_expect.that(
        active == set(FLAG_NAMES),
        what="X-Feature-Flags for alice with every flag on at 100%",
        expected=", ".join(FLAG_NAMES),
        got=header,
        resp=resp,
    )
    etl_flags.set(dict.fromkeys(FLAG_NAMES, False), dict.fromkeys(FLAG_NAMES, 0))
    served = _served_flags(etl_api, etl_expect)
    on = {n: v for n, v in served["flags"].items() if v is not False}
    rolled = {n: v for n, v in served["rollout_percentages"].items() if v != 0}
    etl_expect.that(
        not on and not rolled and set(FLAG_NAMES) <= set(served["flags"]),
        what="GET /api/flags after disabling every flag",
        expected="all six flags false, every rollout 0",
        got=f"on: {on}, rollout: {rolled}",
    )
    for user in USERS:
        header, resp = _header_flags(etl_api, user)
        etl_expect.that(
            header is not None and header.strip() == "",
            what=f"X-Feature-Flags for {user} with every flag off",
            expected="present and empty",
            got=header,
            resp=resp,
        )


@pytest.mark.checklist(RUN_PARTIAL)
def test_partial_rollback_of_each_component(
    etl_api: Any, etl_expect: Any, etl_flags: Any, etl_ops: Any, etl_deploy_root: Path
) -> None:
    """Run `deployment/rollback.sh partial <component>`: that flag off/0, others untouched."""
    _all_on(etl_flags)
    flags_file = etl_deploy_root / "config" / "feature_flags.json"
    for component, flag in COMPONENT_FLAGS.items():
        before = read_json(flags_file)
        proc = etl_ops.rollback("partial", component, timeout=60)
        etl_expect.that(
            proc.returncode == 0,
            what=f"rollback.sh partial {component}",
            expected="exit 0",
            got=f"exit {proc.returncode}: {last_line(proc.stderr) or last_line(proc.stdout)}",
        )
        after = read_json(flags_file)
        etl_flags.wait_loaded(file_sha256(flags_file))
        served = _served_flags(etl_api, etl_expect)
        problems = []
        for doc, where in ((after, "file"), (served, "GET /api/flags")):
            if doc["flags"].get(flag) is not False or doc["rollout_percentages"].get(flag) != 0:
                problems.append(
                    f"{where}: {flag} is {doc['flags'].get(flag)} at "
                    f"{doc['rollout_percentages'].get(flag)}"
                )
            for other in FLAG_NAMES:
                if other == flag:
                    continue
                was = (before["flags"].get(other), before["rollout_percentages"].get(other))
                now = (doc["flags"].get(other), doc["rollout_percentages"].get(other))
                if was != now:
                    problems.append(f"{where}: {other} changed {was} -> {now}")
        etl_expect.that(
            not problems,
            what=f"flags after `rollback.sh partial {component}`",
            expected=f"{flag} false/0, every other flag as before",
            got="; ".join(problems),
        )


@pytest.mark.checklist(RUN_PARTIAL)
def test_partial_rollback_refuses_unknown_component(
    etl_expect: Any, etl_ops: Any, etl_deploy_root: Path, etl_flags: Any
) -> None:
    """Run `deployment/rollback.sh partial <component>`: unknown/missing component fails."""
    flags_file = etl_deploy_root / "config" / "feature_flags.json"
    before = flags_file.read_bytes()
    for args in (("partial", "no_such_component"), ("partial",)):
        proc = etl_ops.rollback(*args, timeout=60)
        etl_expect.that(
            proc.returncode != 0,
            what=f"rollback.sh {' '.join(args)}",
            expected="a non-zero exit",
            got=f"exit {proc.returncode}",
        )
    etl_expect.that(
        flags_file.read_bytes() == before,
        what="flags file after refused partial rollbacks",
        expected="unchanged",
        got="changed",
    )


@pytest.mark.checklist(REDUCED)
def test_reduced_functionality_after_partial_rollback(
    *,
    etl_api: Any,
    etl_expect: Any,
    etl_flags: Any,
    etl_ops: Any,
    etl_deploy_root: Path,
    etl_jobs: Any,
    etl_ws: Any,
) -> None:
    """Monitor system with reduced functionality: core routes and jobs still work."""
    _all_on(etl_flags)
    proc = etl_ops.rollback("partial", "websocket", timeout=60)
    etl_expect.that(
        proc.returncode == 0,
        what="rollback.sh partial websocket",
        expected="exit 0",
        got=f"exit {proc.returncode}: {last_line(proc.stderr)}",
    )
    etl_flags.wait_loaded(file_sha256(etl_deploy_root / "config" / "feature_flags.json"))
    header, resp = _header_flags(etl_api, "alice")
    active = {n.strip() for n in (header or "").split(",") if n.strip()}
    etl_expect.that(
        active == set(FLAG_NAMES) - {"new_websocket_manager"},
        what="X-Feature-Flags for alice after the websocket partial rollback",
        expected="every flag but new_websocket_manager",
        got=header,
        resp=resp,
    )
    for path in ("/api/health", "/api/health/ready", "/api/jobs", "/api/monitor/status"):
        etl_expect.status(etl_api.get(path), 200)
    job_id = f"etlv_reduced_{uuid.uuid4().hex[:10]}"
    ws = etl_ws()
    ws.subscribe(job_ids=[job_id])
    etl_jobs.create(profile="quick", type="TRANSFORM", job_id=job_id)
    pushed = ws.collect(
        lambda m: (
            m.get("type") == "job_status_update"
            and (m.get("data") or {}).get("status") in ("completed", "failed", "cancelled")
        ),
        timeout=60,
    )
    final = etl_jobs.wait_for(job_id, statuses={"completed", "failed", "cancelled"}, timeout=30)
    etl_expect.that(
        final.get("status") == "completed" and pushed[-1]["data"]["status"] == "completed",
        what="a job with reduced functionality",
        expected="completed (REST and WebSocket)",
        got=f"REST {final.get('status')}, pushed {pushed[-1]['data']['status']}",
    )
    health = etl_ops.rollback("health", timeout=30)
    etl_expect.that(
        health.returncode == 0,
        what="rollback.sh health after the partial rollback",
        expected="exit 0",
        got=f"exit {health.returncode}: {last_line(health.stdout)}",
    )


@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(RUN_FULL)
def test_full_rollback_succeeds(full_rollback: FullRollback, etl_expect: Any) -> None:
    """Run `deployment/rollback.sh full`: exit 0, within its time, flags in the safe state."""
    fr = full_rollback
    print(f"rollback full: exit {fr.returncode} in {fr.took_s:.1f} s")
    etl_expect.that(
        fr.returncode == 0,
        what="rollback.sh full",
        expected="exit 0",
        got=f"exit {fr.returncode}: {fr.output[-400:]}",
    )
    on = {n: v for n, v in fr.flags_after.get("flags", {}).items() if v}
    rolled = {n: v for n, v in fr.flags_after.get("rollout_percentages", {}).items() if v}
    etl_expect.that(
        not on and not rolled,
        what="flags file after rollback full",
        expected="every flag false, every rollout 0",
        got=f"on {on}, rollout {rolled}",
    )


@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(RESTART)
def test_restart_replaces_the_process_and_keeps_jobs(
    full_rollback: FullRollback, etl_api: Any, etl_expect: Any
) -> None:
    """Restart ETL Plus service: a new process (pid or uptime reset), jobs persisted across it."""
    fr = full_rollback
    restarted = (fr.before.pid is not None and fr.after.pid != fr.before.pid) or (
        fr.after.started_at > fr.before.started_at + 0.5
    )
    etl_expect.that(
        restarted,
        what="service restarted by rollback full",
        expected="another pid in /api/health/live or uptime_seconds reset",
        got=f"pid {fr.before.pid} -> {fr.after.pid}, uptime {fr.before.uptime_s:.1f} s -> "
        f"{fr.after.uptime_s:.1f} s",
    )
    resp = etl_api.get(f"/api/jobs/{fr.job_id}")
    etl_expect.status(resp, 200)
    etl_expect.that(
        resp.json().get("status") == fr.job_status_before == "completed",
        what=f"job {fr.job_id} after the restart",
        expected="still there, completed as before",
        got=f"before {fr.job_status_before}, after {resp.json().get('status')}",
        resp=resp,
    )
    listing = etl_api.get("/api/jobs")
    etl_expect.status(listing, 200)
    ids = {j.get("id"): j.get("status") for j in listing.json().get("jobs", [])}
    etl_expect.that(
        ids.get(fr.job_id) == "completed",
        what="GET /api/jobs after the restart",
        expected=f"{fr.job_id} listed as completed",
        got=ids.get(fr.job_id, "absent"),
        resp=listing,
    )


@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(RECOVERY)
def test_recovery_is_monitored(full_rollback: FullRollback, etl_api: Any, etl_expect: Any) -> None:
    """Monitor system recovery: healthy right after the restart; `rollback.sh health` exit 0."""
    fr = full_rollback
    etl_expect.that(
        fr.recovered_s is not None and fr.recovered_s < 30,
        what="health after rollback full",
        expected="HTTP 200 within 30 s of the script's end",
        got=fr.recovered_s,
    )
    etl_expect.that(
        fr.health_exit == 0,
        what="rollback.sh health after the restart",
        expected="exit 0",
        got=fr.health_exit,
    )
    ready = etl_api.get("/api/health/ready")
    etl_expect.status(ready, 200)


@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(STABILITY)
def test_stable_after_full_rollback(
    full_rollback: FullRollback, etl_api: Any, etl_expect: Any, etl_jobs: Any
) -> None:
    """Verify system stability: 20 health checks over 4 s all 200, and a job still completes."""
    statuses = []
    for _ in range(20):
        statuses.append(etl_api.get("/api/health").status_code)
        time.sleep(0.2)
    etl_expect.that(
        set(statuses) == {200},
        what="20 health checks after rollback full",
        expected="all HTTP 200",
        got=statuses,
    )
    job_id = etl_jobs.create(profile="quick", type="LOAD")
    final = etl_jobs.wait_for(job_id, statuses={"completed", "failed", "cancelled"}, timeout=60)
    etl_expect.that(
        final.get("status") == "completed",
        what="a job after rollback full",
        expected="completed",
        got=final.get("status"),
    )


@pytest.mark.usefixtures("etl_exclusive")
@pytest.mark.checklist(RESTORE)
def test_restore_from_backup(
    *,
    etl_api: Any,
    etl_expect: Any,
    etl_flags: Any,
    etl_ops: Any,
    etl_deploy_root: Path,
    planned_restart: Any,
) -> None:
    """Restore from backup if binary rollback insufficient: backup, change, `full --restore`."""
    proc = etl_ops.rollback("backup", timeout=60)
    etl_expect.that(
        proc.returncode == 0,
        what="rollback.sh backup",
        expected="exit 0",
        got=f"exit {proc.returncode}: {last_line(proc.stderr)}",
    )
    backup = Path(last_line(proc.stdout).split()[-1])
    if not backup.is_absolute():
        backup = etl_deploy_root / backup
    saved_flags = backup / "config" / "feature_flags.json"
    etl_expect.that(
        backup.is_dir() and saved_flags.is_file() and (backup / "config" / "config.json").is_file(),
        what=f"backup folder {backup}",
        expected="config/config.json and config/feature_flags.json",
        got=sorted(str(p.relative_to(backup)) for p in backup.rglob("*"))
        if backup.is_dir()
        else "absent",
    )
    etl_flags.set({"new_logger_system": True}, {"new_logger_system": 50})
    changed = _served_flags(etl_api, etl_expect)
    etl_expect.that(
        changed["sha256"] != file_sha256(saved_flags),
        what="flags changed after the backup",
        expected="a sha256 other than the backup's",
        got=changed["sha256"],
    )
    helptext = etl_ops.rollback("full", "--help", timeout=30)
    if "--restore" not in (helptext.stdout or "") + (helptext.stderr or ""):
        etl_flags.write_raw(saved_flags.read_text(encoding="utf-8"))
        etl_flags.wait_loaded(file_sha256(saved_flags))
        pytest.skip(
            "rollback.sh full has no --restore: restored the backup's flags by copying only"
        )
    before_pid = etl_api.get("/api/health/live").json().get("pid")
    with planned_restart("rollback full --restore"):
        proc = etl_ops.rollback("full", "--restore", str(backup), timeout=120)
        wait_until(lambda: _ok(etl_api), 30, interval=0.1)
    etl_expect.that(
        proc.returncode == 0,
        what=f"rollback.sh full --restore {backup.name}",
        expected="exit 0",
        got=f"exit {proc.returncode}: {(proc.stdout or '')[-300:]}",
    )
    flags_file = etl_deploy_root / "config" / "feature_flags.json"
    etl_expect.that(
        flags_file.read_bytes() == saved_flags.read_bytes(),
        what="flags file after the restore",
        expected=f"byte-identical to {saved_flags}",
        got="different",
    )
    served = _served_flags(etl_api, etl_expect)
    etl_expect.that(
        served["sha256"] == file_sha256(saved_flags),
        what="flags served after the restore",
        expected=file_sha256(saved_flags),
        got=served["sha256"],
    )
    after_pid = etl_api.get("/api/health/live").json().get("pid")
    etl_expect.that(
        after_pid != before_pid,
        what="service restarted by the restore",
        expected=f"a pid other than {before_pid}",
        got=after_pid,
    )


def _ok(etl_api: Any) -> bool:
    try:
        return bool(etl_api.get("/api/health", timeout=2).status_code == 200)
    except Exception:
        return False
