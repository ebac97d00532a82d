"""Post-deployment functional testing: WebSocket real-time updates (contract section 10).

Checklist "1. Functional Testing": "Verify WebSocket real-time updates". A client subscribes to a
job id it chose before the job exists, creates the job, and compares every pushed status transition
with the lifecycle the job went through (and with the final REST status): in order, none lost, none
twice.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from .support import TERMINAL, TRANSITIONS

if TYPE_CHECKING:
    from collections.abc import Callable

ITEM = "post.1_functional_testing.websocket_real_time"

pytestmark = [pytest.mark.post_deploy, pytest.mark.functional, pytest.mark.checklist(ITEM)]

_ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}")


def _job_id(tag: str) -> str:
    return f"etlv_ws_{tag}_{uuid.uuid4().hex[:12]}"


def _status_of(job_id: str, *statuses: str) -> Callable[[dict[str, Any]], bool]:
    def match(msg: dict[str, Any]) -> bool:
        data = msg.get("data")
        return (
            msg.get("type") == "job_status_update"
            and isinstance(data, dict)
            and data.get("jobId") == job_id
            and data.get("status") in statuses
        )

    return match


def push_problems(
    messages: list[dict[str, Any]], job_id: str, final: str
) -> tuple[list[str], list[str]]:
    """(problems, the pushed status chain) for the messages one connection got for `job_id`."""
    problems: list[str] = []
    chain: list[str] = []
    seen: set[tuple[Any, Any]] = set()
    last_progress = -1.0
    for msg in messages:
        kind, data = msg.get("type"), msg.get("data")
        if kind == "connection_ack":
            continue
        if not isinstance(data, dict):
            problems.append(f"{kind}: data is {type(data).__name__}, not an object")
            continue
        if not isinstance(msg.get("timestamp"), str) or not _ISO_MS.match(msg["timestamp"]):
            problems.append(
                f"{kind}: envelope timestamp {msg.get('timestamp')!r} is not ISO-8601 with ms"
            )
        if (
            kind
            in ("job_status_update", "job_progress_update", "job_log_message", "job_metrics_update")
            and data.get("jobId") != job_id
        ):
            problems.append(
                f"{kind} for job {data.get('jobId')!r} leaked through a {job_id} subscription"
            )
            continue
        if "targetJobId" in msg and msg["targetJobId"] not in (None, job_id):
            problems.append(f"{kind}: targetJobId {msg['targetJobId']!r}")
        progress = data.get("progressPercent")
        if kind in ("job_status_update", "job_progress_update") and isinstance(
            progress, int | float
        ):
            if progress < last_progress:
                problems.append(
                    f"{kind}: progressPercent went down {last_progress:g} -> {progress:g}"
                )
            last_progress = max(last_progress, float(progress))
        if kind != "job_status_update":
            continue
        status, previous = data.get("status"), data.get("previousStatus")
        key = (previous, status)
        if key in seen:
            problems.append(f"transition {previous} -> {status} pushed twice")
        seen.add(key)
        if chain:
            if previous != chain[-1]:
                problems.append(
                    f"pushed {previous} -> {status} after {chain[-1]}: "
                    f"a transition from {chain[-1]} was lost or reordered"
                )
        elif previous not in (None, "pending", "scheduled"):
            problems.append(f"first push is {previous} -> {status}: earlier transitions lost")
        if previous is not None and status not in TRANSITIONS.get(str(previous), frozenset()):
            problems.append(f"{previous} -> {status} is not a lifecycle transition")
        if chain and chain[-1] in TERMINAL:
            problems.append(f"push {previous} -> {status} after the terminal {chain[-1]}")
        chain.append(str(status))
    if not chain or chain[-1] != final:
        problems.append(
            f"the last pushed status is {chain[-1] if chain else None!r}, expected {final!r}"
        )
    if "running" not in chain and final != "cancelled":
        problems.append("no running transition was pushed")
    return problems, chain


def test_pushes_every_transition_of_a_completed_job(
    etl_ws: Any, etl_jobs: Any, etl_expect: Any
) -> None:
    """Verify WebSocket real-time updates: two subscribers see every transition."""
    job_id = _job_id("done")
    first, second = etl_ws(), etl_ws()
    for ws in (first, second):
        ack = ws.subscribe(job_ids=[job_id])
        etl_expect.that(
            isinstance(ack.get("data"), dict) and ack["data"].get("status") == "subscribed",
            what="subscribe acknowledgement",
            expected='connection_ack with status "subscribed"',
            got=ack,
        )
    etl_jobs.create(profile="quick", type="FULL_ETL", job_id=job_id)
    chains = []
    for name, ws in (("first", first), ("second", second)):
        messages = ws.collect(_status_of(job_id, *TERMINAL), timeout=60)
        messages += ws.collect(None, timeout=0.5)  # anything pushed after the end is a duplicate
        problems, chain = push_problems(messages, job_id, "completed")
        etl_expect.that(
            not problems,
            what=f"the {name} subscriber's pushes for {job_id}",
            expected="pending -> running -> completed, each transition once, in order",
            got=f"chain {' -> '.join(chain)}; " + "; ".join(problems),
        )
        chains.append(chain)
    etl_expect.that(
        chains[0] == chains[1],
        what="both subscribers got the same transitions",
        expected=chains[0],
        got=chains[1],
    )
    rest = etl_jobs.get(job_id)
    etl_expect.that(
        rest.get("status") == chains[0][-1],
        what="final REST status matches the last push",
        expected=chains[0][-1],
        got=rest.get("status"),
    )


def test_pushes_cancellation(etl_ws: Any, etl_jobs: Any, etl_expect: Any) -> None:
    """Verify WebSocket real-time updates: a cancelled job's running and cancelled pushes arrive."""
    job_id = _job_id("cancel")
    ws = etl_ws()
    ws.subscribe(job_ids=[job_id])
    etl_jobs.create(profile="long", type="EXTRACT", job_id=job_id)
    messages = ws.collect(_status_of(job_id, "running", *TERMINAL), timeout=20)
    etl_expect.status(etl_jobs.cancel(job_id), 200)
    messages += ws.collect(_status_of(job_id, *TERMINAL), timeout=20)
    messages += ws.collect(None, timeout=0.5)
    problems, chain = push_problems(messages, job_id, "cancelled")
    etl_expect.that(
        not problems,
        what=f"pushes for the cancelled job {job_id}",
        expected="pending -> running -> cancelled, each once, in order",
        got=f"chain {' -> '.join(chain)}; " + "; ".join(problems),
    )
    rest = etl_jobs.get(job_id)
    etl_expect.that(
        rest.get("status") == "cancelled",
        what="final REST status",
        expected="cancelled",
        got=rest.get("status"),
    )


def test_pushes_failure_with_error_message(etl_ws: Any, etl_jobs: Any, etl_expect: Any) -> None:
    """Verify WebSocket real-time updates: a failing job's failed push carries its errorMessage."""
    job_id = _job_id(
        "fail"
    )  # contract section 4: a job id containing "fail" fails in its load step
    ws = etl_ws()
    ws.subscribe(job_ids=[job_id])
    etl_jobs.create(profile="failing", type="FULL_ETL", job_id=job_id)
    messages = ws.collect(_status_of(job_id, *TERMINAL), timeout=60)
    messages += ws.collect(None, timeout=0.3)
    problems, chain = push_problems(messages, job_id, "failed")
    error: Any = None
    for msg in messages:
        if _status_of(job_id, "failed")(msg):
            error = msg["data"].get("errorMessage")
    if not (isinstance(error, str) and error):
        problems.append(f"failed push has errorMessage {error!r}")
    etl_expect.that(
        not problems,
        what=f"pushes for the failing job {job_id}",
        expected="pending -> running -> failed, each once, the failed push with an errorMessage",
        got=f"chain {' -> '.join(chain)}; " + "; ".join(problems),
    )
    rest = etl_jobs.get(job_id)
    etl_expect.that(
        rest.get("status") == "failed",
        what="final REST status",
        expected="failed",
        got=rest.get("status"),
    )
