"""Hostile modes of the reference target (`serve --enable-faults`, `hostile` in `/api/_faults`).

Not a contract section: they imitate a misbehaving real ETL Plus build (leaked connection slots, a
hang on a reused connection after an error, non-JSON error bodies, a WebSocket handshake that never
completes, a process that exits after the first job, 400 for any query string), so that the
project's tests can prove the verification suite copes with each. Every hang is checked on a real
socket with a short timeout: no byte comes and the connection stays open.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from contract_support import (
    HTTP_TIMEOUT,
    QUICK_PROFILE,
    REFERENCE_OVERRIDES,
    TARGET_CONFIG,
    Api,
    TargetFactory,
    assert_error,
    recv_json,
    start_target,
)
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from etlverify.embedded import EmbeddedTarget, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.timeout(60)

FAULTS = "/api/_faults"
#: how long a hostile hang is watched: nothing may arrive, and the socket must still be open
SILENCE_S = 1.0
HOSTILE_OFF = {
    "connection_cap": None,
    "hang_after_error": False,
    "non_json_errors": False,
    "ws_handshake_hang": False,
    "exit_after_first_job_s": None,
    "query_string_400": False,
}


# --- raw HTTP/1.1 over a socket ------------------------------------------------------------------


def open_socket(port: int) -> socket.socket:
    """A fresh TCP connection to the target (one accepted connection, as the cap counts them)."""
    return socket.create_connection(("127.0.0.1", port), timeout=3.0)


def send_request(sock: socket.socket, method: str, path: str, body: bytes = b"") -> None:
    """Write one keep-alive HTTP/1.1 request."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode("ascii") + b"\r\n" + body)


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one response with a Content-Length body: (status, lower-cased headers, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of a response body"
        rest += chunk
    return status, headers, rest[:length]


def request(sock: socket.socket, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request and its answer on `sock`: (status, body)."""
    send_request(sock, method, path, body)
    status, _, data = read_response(sock)
    return status, data


def assert_silent(sock: socket.socket, what: str, wait: float = SILENCE_S) -> None:
    """No byte arrives on `sock` within `wait` seconds, and the server has not closed it."""
    sock.settimeout(wait)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    if data:
        raise AssertionError(f"{what}: expected no answer, got {data[:200]!r}")
    raise AssertionError(f"{what}: expected the connection to stay open, the server closed it")


def assert_still_open(sock: socket.socket, what: str) -> None:
    """The server has neither written to nor closed `sock` (checked without waiting)."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return
    finally:
        sock.setblocking(True)
    detail = f"got {data[:200]!r}" if data else "the server closed it"
    raise AssertionError(f"{what}: expected an open, silent connection, {detail}")


def assert_not_json(body: bytes, what: str) -> None:
    """`body` does not parse as JSON."""
    try:
        json.loads(body)
    except ValueError:
        return
    raise AssertionError(f"{what}: expected a body that is not JSON, got {body[:200]!r}")


def job_body(job_id: str) -> dict[str, str]:
    """A quick job for POST /api/jobs."""
    return {
        "type": "EXTRACT",
        "source_config": QUICK_PROFILE,
        "target_config": TARGET_CONFIG,
        "job_id": job_id,
    }


# --- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty() -> Iterator[EmbeddedTarget]:
    """A reference server started with --enable-faults, shared by the runtime-mode tests."""
    target = start_target(enable_faults=True)
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def fapi(faulty: EmbeddedTarget) -> Iterator[Api]:
    """A client of the faulty server; every fault is cleared before and after the test."""
    with Api(faulty) as client:
        assert client.request("DELETE", FAULTS).status_code == 200
        yield client
    # A fresh client: the test's pooled connections may be the ones left hanging on purpose.
    with Api(faulty) as client:
        assert client.request("DELETE", FAULTS).status_code == 200


def set_hostile(api: Api, **modes: object) -> dict[str, Any]:
    """POST the `hostile` settings; the GET view of them afterwards."""
    r = api.post(FAULTS, json={"hostile": modes})
    assert r.status_code == 200, r.text
    hostile: dict[str, Any] = r.json()["hostile"]
    for key, value in modes.items():
        assert hostile[key] == value, hostile
    return hostile


@pytest.fixture
def cli_targets() -> Iterator[list[EmbeddedTarget]]:
    """Servers started by `serve_hostile`; each is stopped (by PID) at teardown."""
    started: list[EmbeddedTarget] = []
    yield started
    for target in reversed(started):
        target.stop()


def serve_hostile(started: list[EmbeddedTarget], *modes: str) -> EmbeddedTarget:
    """`python -m etlplus_reference serve --enable-faults --hostile MODE ...` on a free port.

    Returns as soon as the process runs; the caller decides how to wait for it, because every
    accepted connection counts for `connection-cap`.
    """
    target = EmbeddedTarget(
        port=free_port(), enable_faults=True, config_overrides=REFERENCE_OVERRIDES
    )
    started.append(target)
    target.init()
    cmd = [sys.executable, "-m", "etlplus_reference", "serve", "--root", str(target.root)]
    cmd += ["--host", "127.0.0.1", "--port", str(target.port), "--enable-faults"]
    for mode in modes:
        cmd += ["--hostile", mode]
    target.root.joinpath("logs").mkdir(parents=True, exist_ok=True)
    with target.server_log.open("ab") as out:
        target.process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return target


def first_connection(target: EmbeddedTarget, timeout: float = 20.0) -> socket.socket:
    """Connect as soon as the server listens: the first connection it accepts (refusals don't
    count as connections)."""
    assert target.process is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.process.poll() is not None:
            raise AssertionError(f"server exited with {target.process.returncode} at start-up")
        try:
            return open_socket(target.port)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise AssertionError(f"server not listening within {timeout:.0f} s")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m etlplus_reference ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "etlplus_reference", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- the settings --------------------------------------------------------------------------------


def test_hostile_settings_merge_show_and_clear(fapi: Api) -> None:
    """`hostile` is off by default, merged key by key, shown by GET and cleared by DELETE."""
    body = fapi.get_json(FAULTS)
    assert body["hostile"] == HOSTILE_OFF
    assert body["active"] is False
    set_hostile(fapi, non_json_errors=True)
    both = set_hostile(fapi, connection_cap=1000, exit_after_first_job_s=30)
    assert both == {
        **HOSTILE_OFF,
        "non_json_errors": True,
        "connection_cap": 1000,
        "exit_after_first_job_s": 30.0,
    }
    shown = fapi.get_json(FAULTS)
    assert shown["hostile"] == both
    assert shown["active"] is True
    r = fapi.request("DELETE", FAULTS)
    assert r.status_code == 200
    assert r.json()["hostile"] == HOSTILE_OFF
    assert r.json()["active"] is False


@pytest.mark.parametrize(
    ("hostile", "field"),
    [
        ({"connection_cap": -1}, "hostile.connection_cap"),
        ({"connection_cap": "5"}, "hostile.connection_cap"),
        ({"connection_cap": True}, "hostile.connection_cap"),
        ({"connection_cap": 2.5}, "hostile.connection_cap"),
        ({"hang_after_error": 1}, "hostile.hang_after_error"),
        ({"query_string_400": "yes"}, "hostile.query_string_400"),
        ({"exit_after_first_job_s": -0.5}, "hostile.exit_after_first_job_s"),
        ({"exit_after_first_job_s": "soon"}, "hostile.exit_after_first_job_s"),
        ({"slow_loris": True}, "hostile.slow_loris"),
        ([], "hostile"),
    ],
)
def test_bad_hostile_settings_are_400_and_change_nothing(
    fapi: Api, hostile: object, field: str
) -> None:
    """A bad value is the contract's 400 naming the field; the whole POST is refused."""
    body: dict[str, Any] = {"latency": {"ms": 5}, "hostile": hostile}
    if isinstance(hostile, dict):
        hostile = {"non_json_errors": True, **hostile}
        body["hostile"] = hostile
    assert_error(fapi.post(FAULTS, json=body), 400, field=field)
    shown = fapi.get_json(FAULTS)
    assert shown["hostile"] == HOSTILE_OFF
    assert shown["latency"]["ms"] == 0


# --- connection cap ------------------------------------------------------------------------------


def test_connection_cap_leaves_later_connections_unanswered(make_target: TargetFactory) -> None:
    """cap 5 at runtime: connections 1-5 (4 HTTP, 1 WebSocket) work; the 6th HTTP and 7th
    WebSocket connections are accepted, read and never answered, and stay open."""
    target = make_target(enable_faults=True)
    with httpx.Client(base_url=target.base_url, timeout=HTTP_TIMEOUT) as admin:
        r = admin.post(FAULTS, json={"hostile": {"connection_cap": 5}})
        assert r.status_code == 200, r.text
    socks = [open_socket(target.port) for _ in range(4)]
    try:
        for i, sock in enumerate(socks, 1):
            status, _ = request(sock, "GET", "/api/health")
            assert status == 200, f"connection {i} within the cap"
        with connect(target.ws_url, open_timeout=3, close_timeout=1) as ws:  # connection 5
            assert recv_json(ws, 3.0)["type"] == "connection_ack"
            sixth = open_socket(target.port)
            socks.append(sixth)
            send_request(sixth, "GET", "/api/health")
            assert_silent(sixth, "connection 6 (over the cap)")
            started = time.monotonic()
            with (
                pytest.raises(TimeoutError),
                connect(target.ws_url, open_timeout=SILENCE_S, close_timeout=0.5),
            ):
                pass  # pragma: no cover - the handshake must not complete
            assert time.monotonic() - started < SILENCE_S + 1.0
            # The connections within the cap keep working for their lifetime.
            status, _ = request(socks[0], "GET", "/api/health/live")
            assert status == 200
        assert_still_open(sixth, "connection 6 after the others were used")
    finally:
        for sock in socks:
            sock.close()


def test_cli_connection_cap_counts_from_start_with_other_modes(
    cli_targets: list[EmbeddedTarget],
) -> None:
    """`--hostile connection-cap=3 --hostile non-json-errors`: connections 1-3 since the start
    answer (the 404 in HTML), the 4th does not."""
    target = serve_hostile(cli_targets, "connection-cap=3", "non-json-errors")
    first = first_connection(target)
    socks = [first]
    try:
        status, body = request(first, "GET", FAULTS)
        assert status == 200
        hostile = json.loads(body)["hostile"]
        assert hostile == {**HOSTILE_OFF, "connection_cap": 3, "non_json_errors": True}
        socks += [open_socket(target.port) for _ in range(3)]
        status, body = request(socks[1], "GET", "/api/no-such-route")
        assert status == 404
        assert_not_json(body, "404 with non-json-errors")
        status, _ = request(socks[2], "GET", "/api/health")
        assert status == 200
        send_request(socks[3], "GET", "/api/health")
        assert_silent(socks[3], "connection 4 (over the cap of 3)")
        status, _ = request(first, "GET", "/api/health")
        assert status == 200
    finally:
        for sock in socks:
            sock.close()


# --- hang after an error -------------------------------------------------------------------------


def test_hang_after_error_on_a_reused_connection(fapi: Api, faulty: EmbeddedTarget) -> None:
    """After an error answer on a keep-alive connection, a later request on it is never
    answered (and not closed); other connections, and connections without errors, work."""
    set_hostile(fapi, hang_after_error=True)
    clean, poisoned = open_socket(faulty.port), open_socket(faulty.port)
    try:
        for _ in range(3):
            assert request(clean, "GET", "/api/health")[0] == 200
        assert request(poisoned, "GET", "/api/health")[0] == 200
        status, body = request(poisoned, "GET", "/api/jobs/no-such-job")
        assert status == 404
        assert json.loads(body)["code"] == "JOB_NOT_FOUND"
        send_request(poisoned, "GET", "/api/health")
        assert_silent(poisoned, "second request after a 404 on the same connection")
        assert request(clean, "GET", "/api/health")[0] == 200
        fresh = open_socket(faulty.port)
        with fresh:
            assert request(fresh, "GET", "/api/health")[0] == 200
        assert_still_open(poisoned, "the connection that got the 404")
    finally:
        clean.close()
        poisoned.close()


def test_hang_after_error_off_reuses_connection_normally(fapi: Api, faulty: EmbeddedTarget) -> None:
    """The control: without the mode, the same sequence is answered in full."""
    with open_socket(faulty.port) as sock:
        assert request(sock, "GET", "/api/jobs/no-such-job")[0] == 404
        assert request(sock, "GET", "/api/health")[0] == 200


# --- non-JSON error bodies -----------------------------------------------------------------------


def test_non_json_errors_keep_status_and_break_the_body(fapi: Api, faulty: EmbeddedTarget) -> None:
    """404, 405, 400 (bad body) and the parser's own 400 keep their status with a non-JSON body;
    successful answers stay JSON."""
    set_hostile(fapi, non_json_errors=True)
    answers = {
        404: fapi.get("/api/no-such-route"),
        405: fapi.request("DELETE", "/api/health"),
        400: fapi.post(
            "/api/jobs", content=b"{not json", headers={"content-type": "application/json"}
        ),
    }
    for status, r in answers.items():
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("text/html"), r.headers
        assert_not_json(r.content, f"HTTP {status}")
    with open_socket(faulty.port) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        status, _, body = read_response(sock)
        assert status == 400
        assert_not_json(body, "the parser's 400")
    assert fapi.get_json("/api/health")["status"] in ("healthy", "degraded")
    assert fapi.request("DELETE", FAULTS).status_code == 200
    assert_error(fapi.get("/api/no-such-route"), 404, "NOT_FOUND")


# --- WebSocket handshake -------------------------------------------------------------------------


def test_ws_handshake_hang(fapi: Api, faulty: EmbeddedTarget) -> None:
    """The upgrade on /ws is accepted and read, and the 101 never comes; HTTP still works."""
    set_hostile(fapi, ws_handshake_hang=True)
    started = time.monotonic()
    with (
        pytest.raises(TimeoutError),
        connect(faulty.ws_url, open_timeout=SILENCE_S, close_timeout=0.5),
    ):
        pass  # pragma: no cover - the handshake must not complete
    assert time.monotonic() - started < SILENCE_S + 1.0
    with open_socket(faulty.port) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert_silent(sock, "WebSocket upgrade on /ws")
        assert fapi.get("/api/health").status_code == 200
        assert_still_open(sock, "the hung upgrade")
    assert fapi.request("DELETE", FAULTS).status_code == 200
    with connect(faulty.ws_url, open_timeout=3, close_timeout=1) as ws:
        assert recv_json(ws, 3.0)["type"] == "connection_ack"


# --- query strings -------------------------------------------------------------------------------


def test_query_string_400_with_a_non_contract_body(fapi: Api) -> None:
    """Any query string gets 400 whose body is not the contract's error; without one, 200."""
    set_hostile(fapi, query_string_400=True)
    for path in ("/api/jobs?limit=1", "/api/health?x=1", "/api/logs?lines=5"):
        r = fapi.get(path)
        assert r.status_code == 400, (path, r.text)
        body = r.json()
        assert body == {"error": "bad query"}, body
        assert "status" not in body
        assert "code" not in body
    assert fapi.get("/api/jobs").status_code == 200
    assert fapi.get("/api/health").status_code == 200


def test_query_string_400_refuses_the_websocket_upgrade_too(
    fapi: Api, faulty: EmbeddedTarget
) -> None:
    """`/ws?x=1` is a request with a query string: its upgrade is refused with that 400."""
    set_hostile(fapi, query_string_400=True)
    with pytest.raises(InvalidStatus) as refused:
        connect(faulty.ws_url + "?x=1", open_timeout=3, close_timeout=0.5)
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body) == {"error": "bad query"}
    with connect(faulty.ws_url, open_timeout=3, close_timeout=1) as ws:
        assert recv_json(ws, 3.0)["type"] == "connection_ack"


def test_non_json_errors_on_a_refused_websocket_upgrade(make_target: TargetFactory) -> None:
    """A WebSocket upgrade refused by the server (here: over max connections 1 -> 503) keeps its
    status and gets the non-JSON body too."""
    target = make_target({"websocket": {"max_connections": 1}}, enable_faults=True)
    with Api(target) as api:
        set_hostile(api, non_json_errors=True)
    with connect(target.ws_url, open_timeout=3, close_timeout=1) as ws:
        assert recv_json(ws, 3.0)["type"] == "connection_ack"
        with pytest.raises(InvalidStatus) as refused:
            connect(target.ws_url, open_timeout=3, close_timeout=0.5)
    assert refused.value.response.status_code == 503
    assert_not_json(refused.value.response.body or b"", "the 503 WebSocket refusal")


# --- the process exits after the first job -------------------------------------------------------


def test_exit_after_first_job_at_runtime(make_target: TargetFactory) -> None:
    """Armed by the first POST /api/jobs (answered 201); DELETE calls a pending exit off; armed
    again, the process exits with 70 about S seconds later."""
    target = make_target(enable_faults=True)
    assert target.process is not None
    with Api(target) as api:
        set_hostile(api, exit_after_first_job_s=0.5)
        api.create_job(job_id="hostile-exit-called-off")
        assert api.request("DELETE", FAULTS).status_code == 200
        time.sleep(0.9)
        assert target.process.poll() is None, "exit was not called off by DELETE"
        set_hostile(api, exit_after_first_job_s=0.3)
        time.sleep(0.5)
        assert target.process.poll() is None, "exited before any job was created"
        r = api.post("/api/jobs", json=job_body("hostile-exit-1"))
        assert r.status_code == 201, r.text
        assert r.json()["job_id"] == "hostile-exit-1"
        armed = time.monotonic()
        assert target.process.wait(timeout=5) == 70
        assert time.monotonic() - armed >= 0.2


def test_cli_exit_after_first_job_default_delay(cli_targets: list[EmbeddedTarget]) -> None:
    """`--hostile exit-after-first-job` (default 1 s): serve exits with 70 after the first job."""
    target = serve_hostile(cli_targets, "exit-after-first-job")
    target.wait_healthy(20.0)
    assert target.process is not None
    with Api(target) as api:
        assert api.get_json(FAULTS)["hostile"]["exit_after_first_job_s"] == 1.0
        r = api.post("/api/jobs", json=job_body("hostile-cli-exit"))
        assert r.status_code == 201, r.text
        armed = time.monotonic()
    assert target.process.wait(timeout=6) == 70
    assert time.monotonic() - armed >= 0.8


# --- the command line ----------------------------------------------------------------------------


def test_cli_hostile_needs_enable_faults(tmp_path: Any) -> None:
    """`--hostile` without `--enable-faults` is a one-line usage error (exit 2)."""
    proc = run_cli("serve", "--root", str(tmp_path), "--hostile", "hang-after-error")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "--hostile needs --enable-faults" in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("slow-loris", "unknown hostile mode"),
        ("connection-cap", "connection-cap=N"),
        ("connection-cap=many", "integer"),
        ("connection-cap=-2", "connection_cap"),
        ("exit-after-first-job=soon", "number"),
        ("hang-after-error=1", "takes no value"),
    ],
)
def test_cli_bad_hostile_mode_is_one_line(tmp_path: Any, mode: str, says: str) -> None:
    """A bad MODE is named in one line on stderr, exit 2, before anything starts."""
    proc = run_cli("serve", "--root", str(tmp_path), "--enable-faults", "--hostile", mode)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert says in lines[0], lines[0]


def test_cli_help_lists_the_hostile_modes() -> None:
    """`serve --help` documents every mode."""
    proc = run_cli("serve", "--help")
    assert proc.returncode == 0
    for mode in (
        "connection-cap=N",
        "hang-after-error",
        "non-json-errors",
        "ws-handshake-hang",
        "exit-after-first-job[=S]",
        "query-string-400",
    ):
        assert mode in proc.stdout, mode
