"""Contract section 10 (WebSocket `/ws`): ack, envelope, subscriptions, ordering and bounds."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import statistics
import time
import uuid
from datetime import UTC
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    TERMINAL,
    TRANSITIONS,
    Api,
    TargetFactory,
    drain,
    file_sha256,
    is_status,
    parse_iso,
    poll_until,
    recv_json,
    recv_until,
    slow_socket,
    ws_connect,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from etlplus_reference.root import default_flags, write_json_atomic

if TYPE_CHECKING:
    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(60)

MESSAGE_TYPES = {
    "job_status_update",
    "job_progress_update",
    "job_log_message",
    "job_metrics_update",
    "system_notification",
    "connection_ack",
    "error_message",
}
STATUS_FIELDS = {"jobId", "status", "previousStatus", "timestamp", "progressPercent", "currentStep"}
PROGRESS_FIELDS = {"jobId", "progressPercent", "currentStep", "timestamp"}
LOG_FIELDS = {"jobId", "level", "component", "message", "timestamp", "context"}
ENVELOPE_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\d*(Z|[+-]\d\d:?\d\d)?")


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _check_envelope(msg: dict[str, Any]) -> None:
    assert msg.get("type") in MESSAGE_TYPES, msg
    ts = msg.get("timestamp")
    assert isinstance(ts, str), msg
    assert ENVELOPE_TS.fullmatch(ts), f"envelope timestamp not ISO-8601 with ms: {ts!r}"
    assert isinstance(msg.get("data"), dict), msg
    if "targetJobId" in msg:
        assert msg["targetJobId"] is None or isinstance(msg["targetJobId"], str), msg
    if "targetLevel" in msg:
        assert msg["targetLevel"] is None or isinstance(msg["targetLevel"], str), msg
    extra = set(msg) - {"type", "timestamp", "data", "targetJobId", "targetLevel"}
    assert not extra, f"unexpected envelope keys {extra}: {msg}"


def _subscribe(ws: ClientConnection, **data: Any) -> dict[str, Any]:
    ws.send(json.dumps({"type": "subscribe", "data": data}))
    msgs = recv_until(
        ws,
        lambda m: m.get("type") in ("connection_ack", "error_message"),
        timeout=5,
    )
    ack = msgs[-1]
    assert ack["type"] == "connection_ack", ack
    assert ack["data"]["status"] == "subscribed", ack
    return ack


def _job_id_of(msg: dict[str, Any]) -> str | None:
    data = msg.get("data") or {}
    value = data.get("jobId", msg.get("targetJobId"))
    return value if isinstance(value, str) else None


def _status_updates(msgs: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [
        m["data"] for m in msgs if m.get("type") == "job_status_update" and _job_id_of(m) == job_id
    ]


def _check_chain(updates: list[dict[str, Any]], final: str) -> None:
    """Each transition once, in order, each allowed by the lifecycle, ending at `final`."""
    statuses = [u["status"] for u in updates]
    assert statuses, "no job_status_update received"
    assert statuses[-1] == final, statuses
    assert len(statuses) == len(set(statuses)), f"a status pushed twice: {statuses}"
    for i, u in enumerate(updates):
        prev = u.get("previousStatus")
        if i > 0:
            assert prev == updates[i - 1]["status"], f"out of order or missing: {statuses}"
        if prev is not None:
            assert u["status"] in TRANSITIONS[prev], f"{prev} -> {u['status']}: {statuses}"


# --- connect, envelope, subscribe ---------------------------------------------------------------


def test_connection_ack(reference: EmbeddedTarget) -> None:
    """§10: on connect the server sends connection_ack {status: connected, connectionId}."""
    with connect(reference.ws_url, open_timeout=5, close_timeout=2) as ws:
        msg = recv_json(ws, 5)
    _check_envelope(msg)
    assert msg["type"] == "connection_ack", msg
    assert msg["data"]["status"] == "connected", msg
    assert isinstance(msg["data"]["connectionId"], str), msg
    assert msg["data"]["connectionId"], msg


def test_connection_ids_are_distinct(reference: EmbeddedTarget) -> None:
    """§10: each connection gets its own connectionId."""
    with (
        connect(reference.ws_url, open_timeout=5, close_timeout=2) as a,
        connect(reference.ws_url, open_timeout=5, close_timeout=2) as b,
    ):
        ida = recv_json(a, 5)["data"]["connectionId"]
        idb = recv_json(b, 5)["data"]["connectionId"]
    assert ida != idb


def test_subscribe_is_acknowledged(reference: EmbeddedTarget) -> None:
    """§10: subscribe is answered by connection_ack with status subscribed."""
    with ws_connect(reference) as ws:
        ack = _subscribe(
            ws,
            jobIds=["a"],
            messageTypes=["job_status_update"],
            logLevels=["ERROR"],
            includeSystemNotifications=False,
        )
    _check_envelope(ack)


def test_websocket_count_in_health(api: Api, reference: EmbeddedTarget) -> None:
    """§3/§10: open connections show in /api/health/status components.websocket.connections."""
    with ws_connect(reference), ws_connect(reference):
        n = api.get_json("/api/health/status")["components"]["websocket"]["connections"]
        assert n >= 2, n


def test_messages_sent_is_cumulative(api: Api, reference: EmbeddedTarget) -> None:
    """§3/§10: metrics websocket.messages_sent counts every message sent, cumulatively."""
    before = api.get_json("/api/health/metrics")["metrics"]["websocket"]["messages_sent"]
    job_id = _uid("ws_count")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[job_id])
        api.create_job("EXTRACT", job_id=job_id)
        got = recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
    after = api.get_json("/api/health/metrics")["metrics"]["websocket"]["messages_sent"]
    # the connect ack, the subscribe ack and every message received here were sent
    assert after - before >= len(got) + 2, (before, after, len(got))


# --- pushes -------------------------------------------------------------------------------------


def test_transitions_pushed_once_in_order(api: Api, reference: EmbeddedTarget) -> None:
    """§10: every status transition is pushed once, in order, with the status data fields."""
    job_id = _uid("ws_order")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[job_id])
        api.create_job("FULL_ETL", job_id=job_id)
        msgs = recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
        msgs += drain(ws, 0.5)
    for m in msgs:
        _check_envelope(m)
    updates = _status_updates(msgs, job_id)
    _check_chain(updates, "completed")
    assert "running" in [u["status"] for u in updates]
    for u in updates:
        assert set(u) >= STATUS_FIELDS, u
        assert u["jobId"] == job_id
        parse_iso(u["timestamp"])
        assert 0 <= u["progressPercent"] <= 100, u
    assert updates[-1]["progressPercent"] == 100, updates[-1]
    assert api.job(job_id)["status"] == "completed"


def test_all_connections_get_the_same_transitions(api: Api, reference: EmbeddedTarget) -> None:
    """§10: each transition goes to every matching connection (same sequence on two sockets)."""
    job_id = _uid("ws_fan")
    with ws_connect(reference) as a, ws_connect(reference) as b:
        _subscribe(a, jobIds=[job_id])
        api.create_job("EXTRACT", job_id=job_id)
        got_a = recv_until(a, is_status(job_id, *TERMINAL), timeout=20)
        got_b = recv_until(b, is_status(job_id, *TERMINAL), timeout=20)
    seq_a = [(u["previousStatus"], u["status"]) for u in _status_updates(got_a, job_id)]
    seq_b = [(u["previousStatus"], u["status"]) for u in _status_updates(got_b, job_id)]
    assert seq_a == seq_b, (seq_a, seq_b)


def test_failed_and_cancelled_transitions(api: Api, reference: EmbeddedTarget) -> None:
    """§10: failed and cancelled jobs push their final transition with the right previous status."""
    failing, cancelled = _uid("ws_fail"), _uid("ws_cancel")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[failing, cancelled], messageTypes=["job_status_update"])
        api.create_job("FULL_ETL", job_id=failing)
        api.create_job("EXTRACT", "rows=100000;batch=50;delay_ms=50", job_id=cancelled)
        api.wait_status(cancelled, {"running"})
        assert api.cancel(cancelled).status_code == 200
        msgs = recv_until(ws, is_status(cancelled, "cancelled"), timeout=10)
        if not any(is_status(failing, "failed")(m) for m in msgs):
            msgs += recv_until(ws, is_status(failing, "failed"), timeout=20)
    fail_updates = _status_updates(msgs, failing)
    _check_chain(fail_updates, "failed")
    assert fail_updates[-1]["previousStatus"] == "running"
    assert isinstance(fail_updates[-1].get("errorMessage"), str), fail_updates[-1]
    cancel_updates = _status_updates(msgs, cancelled)
    _check_chain(cancel_updates, "cancelled")


def test_progress_pushed_per_batch(api: Api, reference: EmbeddedTarget) -> None:
    """§10: progress is pushed at least once per batch (4 batches here), never going back."""
    job_id = _uid("ws_prog")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[job_id], messageTypes=["job_progress_update", "job_status_update"])
        api.create_job("EXTRACT", "rows=200;batch=50;delay_ms=5", job_id=job_id)
        msgs = recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
    progress = [m["data"] for m in msgs if m["type"] == "job_progress_update"]
    assert len(progress) >= 4, f"{len(progress)} progress messages for 4 batches"
    for p in progress:
        assert set(p) >= PROGRESS_FIELDS, p
        assert p["jobId"] == job_id
    pct = [p["progressPercent"] for p in progress]
    assert pct == sorted(pct), pct
    assert all(0 <= v <= 100 for v in pct), pct


def test_log_messages_shape(api: Api, reference: EmbeddedTarget) -> None:
    """§10: job_log_message carries jobId, level, component, message, timestamp, context."""
    job_id = _uid("ws_logs")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[job_id], messageTypes=["job_log_message", "job_status_update"])
        api.create_job("EXTRACT", job_id=job_id)
        msgs = recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
    logs = [m for m in msgs if m["type"] == "job_log_message"]
    assert logs, "no job_log_message for a whole job"
    for m in logs:
        d = m["data"]
        assert set(d) >= LOG_FIELDS, d
        assert d["level"] in ("DEBUG", "INFO", "WARN", "ERROR", "FATAL"), d
        assert isinstance(d["context"], dict), d
        assert d["jobId"] == job_id


def test_pushes_are_timely(api: Api, reference: EmbeddedTarget) -> None:
    """§10: transitions SHOULD arrive within 100 ms (median over one job's transitions)."""
    job_id = _uid("ws_fast")
    delays: list[float] = []
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[job_id], messageTypes=["job_status_update"])
        api.create_job("EXTRACT", job_id=job_id)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            msg = recv_json(ws, max(0.1, deadline - time.monotonic()))
            ts = parse_iso(msg["data"]["timestamp"])
            ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            delays.append(time.time() - ts.timestamp())
            if msg["data"]["status"] in TERMINAL:
                break
    assert delays, "no status update"
    assert statistics.median(delays) < 0.1, delays


# --- subscription filters -----------------------------------------------------------------------


def test_filter_by_job_id(api: Api, reference: EmbeddedTarget) -> None:
    """§10: a jobIds subscription gets only messages of those jobs."""
    mine, other = _uid("ws_mine"), _uid("ws_other")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[mine])
        api.create_job("EXTRACT", job_id=other)
        api.create_job("EXTRACT", job_id=mine)
        msgs = recv_until(ws, is_status(mine, *TERMINAL), timeout=20)
        api.wait_status(other, TERMINAL)
        msgs += drain(ws, 0.3)
    jobs = {_job_id_of(m) for m in msgs if m["type"].startswith("job_")}
    assert jobs == {mine}, jobs


def test_filter_by_message_type(api: Api, reference: EmbeddedTarget) -> None:
    """§10: a messageTypes subscription gets only those types."""
    job_id = _uid("ws_types")
    with ws_connect(reference) as ws:
        _subscribe(ws, messageTypes=["job_status_update"])
        api.create_job("EXTRACT", job_id=job_id)
        msgs = recv_until(ws, is_status(job_id, *TERMINAL), timeout=20)
        msgs += drain(ws, 0.3)
    assert {m["type"] for m in msgs} == {"job_status_update"}, {m["type"] for m in msgs}


def test_filter_by_log_level(api: Api, reference: EmbeddedTarget) -> None:
    """§10: a logLevels subscription gets exactly the log messages of those levels."""
    job_id = _uid("ws_lvl_fail")
    with (
        ws_connect(reference) as every,
        ws_connect(reference) as info,
        ws_connect(reference) as warn,
    ):
        _subscribe(every, jobIds=[job_id], messageTypes=["job_log_message"])
        _subscribe(info, jobIds=[job_id], messageTypes=["job_log_message"], logLevels=["INFO"])
        _subscribe(
            warn,
            jobIds=[job_id],
            messageTypes=["job_log_message"],
            logLevels=["WARN", "ERROR", "FATAL"],
        )
        api.create_job("FULL_ETL", job_id=job_id)  # fails: some logs above INFO
        api.wait_status(job_id, {"failed"})
        conns = (("all", every), ("info", info), ("warn", warn))
        got = {name: drain(ws, 0.5) for name, ws in conns}
    levels = [m["data"]["level"] for m in got["all"]]
    assert "INFO" in levels, levels
    assert set(levels) & {"WARN", "ERROR", "FATAL"}, f"nothing above INFO for a failure: {levels}"
    assert [m["data"] for m in got["info"]] == [
        m["data"] for m in got["all"] if m["data"]["level"] == "INFO"
    ]
    assert [m["data"] for m in got["warn"]] == [
        m["data"] for m in got["all"] if m["data"]["level"] in ("WARN", "ERROR", "FATAL")
    ]


def test_filter_system_notifications(api: Api, reference: EmbeddedTarget) -> None:
    """§10: includeSystemNotifications false keeps system_notification away; others still get it."""
    flags = reference.root / "config" / "feature_flags.json"
    with ws_connect(reference) as quiet, ws_connect(reference) as loud:
        _subscribe(quiet, includeSystemNotifications=False)
        _subscribe(loud, includeSystemNotifications=True)
        try:
            flags.write_bytes(b"{invalid")
            recv_until(loud, lambda m: m["type"] == "system_notification", timeout=5)
            got = drain(quiet, 0.5)
        finally:
            write_json_atomic(flags, default_flags())
            sha = file_sha256(flags)
            poll_until(lambda: api.get_json("/api/flags")["sha256"] == sha, timeout=5)
    assert not [m for m in got if m["type"] == "system_notification"], got


# --- malformed client messages ------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        "[1, 2, 3]",
        '"subscribe"',
        "{}",
        '{"type": 5}',
        '{"type": "explode"}',
        '{"type": "subscribe", "data": 5}',
        '{"type": "subscribe", "data": {"jobIds": "job_1"}}',
        '{"type": "subscribe", "data": {"messageTypes": ["no_such_type"]}}',
        '{"type": "subscribe", "data": {"includeSystemNotifications": "yes"}}',
        "[" * 50000,
        b"\x00\x01binary",
    ],
    ids=[
        "not-json",
        "array",
        "string",
        "no-type",
        "type-not-string",
        "unknown-type",
        "data-not-object",
        "jobIds-not-list",
        "unknown-message-type",
        "bool-as-string",
        "deep-nesting",
        "binary",
    ],
)
def test_malformed_message_gets_error_and_stays_open(
    reference: EmbeddedTarget, message: str | bytes
) -> None:
    """§10: a malformed client message gets error_message {error}; the connection stays open."""
    with ws_connect(reference) as ws:
        ws.send(message)
        reply = recv_json(ws, 5)
        _check_envelope(reply)
        assert reply["type"] == "error_message", reply
        assert isinstance(reply["data"].get("error"), str), reply
        assert reply["data"]["error"], reply
        _subscribe(ws)  # still open and still served


def test_bad_subscribe_keeps_previous_subscription(api: Api, reference: EmbeddedTarget) -> None:
    """§10: a rejected subscribe does not change what the connection gets."""
    mine = _uid("ws_keep")
    with ws_connect(reference) as ws:
        _subscribe(ws, jobIds=[mine], messageTypes=["job_status_update"])
        ws.send('{"type": "subscribe", "data": {"jobIds": 1}}')
        assert recv_json(ws, 5)["type"] == "error_message"
        other = api.create_job("EXTRACT")
        api.create_job("EXTRACT", job_id=mine)
        msgs = recv_until(ws, is_status(mine, *TERMINAL), timeout=20)
        api.wait_status(other, TERMINAL)
        msgs += drain(ws, 0.3)
    assert {_job_id_of(m) for m in msgs} == {mine}


# --- bounds -------------------------------------------------------------------------------------


def test_max_connections_refused_with_503(make_target: TargetFactory) -> None:
    """§10: past websocket.max_connections the upgrade is refused with 503; a freed slot is used."""
    target = make_target({"websocket": {"max_connections": 2}})
    with ws_connect(target), ws_connect(target) as second:
        with pytest.raises(InvalidStatus) as refused:
            connect(target.ws_url, open_timeout=5, close_timeout=2)
        assert refused.value.response.status_code == 503
        second.close()

        def third_accepted() -> bool:
            try:
                with ws_connect(target):
                    return True
            except InvalidStatus:
                return False

        poll_until(third_accepted, timeout=5, interval=0.1, what="a freed slot")


def _raw_ws_handshake(target: EmbeddedTarget) -> socket.socket:
    """A WebSocket opened by hand, whose client then never answers anything (not even pings)."""
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:100]
    return sock


def test_unresponsive_client_is_dropped_after_missed_pings(make_target: TargetFactory) -> None:
    """§10: the server pings and drops a connection that misses 3 pings (0.3 s interval here)."""
    target = make_target({"websocket": {"ping_interval_s": 0.3, "ping_misses": 3}})
    with Api(target) as api:
        sock = _raw_ws_handshake(target)
        try:
            poll_until(
                lambda: (
                    api.get_json("/api/health/status")["components"]["websocket"]["connections"]
                    == 1
                ),
                timeout=3,
                what="connection registered",
            )
            poll_until(
                lambda: (
                    api.get_json("/api/health/status")["components"]["websocket"]["connections"]
                    == 0
                ),
                timeout=8,
                interval=0.2,
                what="unresponsive connection dropped",
            )
        finally:
            sock.close()


def _all_terminal(job_ids: list[str]) -> Any:
    """A `recv_until` stop: true once every job in `job_ids` has pushed a terminal status."""
    left = set(job_ids)

    def stop(msg: dict[str, Any]) -> bool:
        if msg.get("type") == "job_status_update" and msg["data"].get("status") in TERMINAL:
            left.discard(msg["data"].get("jobId"))
        return not left

    return stop


def test_slow_reader_closed_1013_others_unaffected(make_target: TargetFactory) -> None:
    """§10: a reader that never reads overflows max_queue and is closed 1013; others keep receiving.

    The kernel buffers megabytes between the server and a stalled reader, so flood jobs (with
    64-character ids, for bigger messages) are started until the server drops the slow reader.
    """
    target = make_target({"websocket": {"max_queue": 8}})

    def open_connections() -> int:
        return int(api.get_json("/api/health/status")["components"]["websocket"]["connections"])

    flood: list[str] = []
    # max_queue=None: the fast client's reader thread buffers everything, so it never stalls.
    # max_queue=1 and no compression: the slow client's reader thread stops after a message or
    # two, so its tiny socket buffer fills and the server-side queue of this connection grows.
    with (
        Api(target) as api,
        ws_connect(target, max_queue=None) as fast,
        connect(
            target.ws_url,
            sock=slow_socket(target),
            open_timeout=5,
            close_timeout=2,
            max_queue=1,
            compression=None,
        ) as slow,
    ):
        poll_until(lambda: open_connections() == 2, timeout=5, what="both connections open")
        deadline = time.monotonic() + 40
        while open_connections() == 2:
            assert time.monotonic() < deadline, f"slow reader not dropped after {len(flood)} jobs"
            running = [j for j in flood if api.job(j)["status"] not in TERMINAL]
            if len(running) < 2:
                flood.append(
                    api.create_job(
                        "EXTRACT", "rows=20000;batch=5;delay_ms=0", job_id=_uid("f" * 53)
                    )
                )
            time.sleep(0.05)
        for job_id in flood:
            api.cancel(job_id)  # 200 or 409 (already over): only to stop the flood
        # read what the slow one was sent: it must end with a close frame 1013
        with pytest.raises(ConnectionClosed) as closed:  # noqa: PT012 - a read loop
            read_deadline = time.monotonic() + 20
            while time.monotonic() < read_deadline:
                slow.recv(timeout=5)
        assert closed.value.rcvd is not None, f"closed without a close frame: {closed.value}"
        assert closed.value.rcvd.code == 1013, closed.value
        # the fast connection got every transition of every flood job
        received = recv_until(fast, _all_terminal(flood), timeout=30)
        for job_id in flood:
            _check_chain(_status_updates(received, job_id), api.job(job_id)["status"])
        # and still works after the slow one was dropped
        after = _uid("ws_after")
        _subscribe(fast, jobIds=[after], messageTypes=["job_status_update"])
        api.create_job("EXTRACT", job_id=after)
        _check_chain(
            _status_updates(recv_until(fast, is_status(after, *TERMINAL), timeout=20), after),
            "completed",
        )
