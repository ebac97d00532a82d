"""The reference target's command line and operations scripts (contract section 11), end to end.

Real processes throughout: servers are started with `etlverify.embedded.EmbeddedTarget` (which also
stops a server that `rollback full` restarted), and the operations run through the generated
`deployment/rollback.sh` / `monitoring/monitor.sh` scripts or `python -m etlplus_reference`. A few
fast checks call `cli.main` in-process; they still talk to a real server or a real root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from etlplus_reference.cli import main
from etlplus_reference.passwords import verify_password
from etlplus_reference.root import COMPONENT_FLAGS, FLAG_NAMES, write_json_atomic
from etlverify.embedded import SUITE_CONFIG_OVERRIDES, EmbeddedTarget, deep_merge, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

CLI_TIMEOUT = 60.0
ALERT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[(INFO|WARNING|CRITICAL)\] \[[a-z_]+\] \S.*$"
)
#: The machine is shared: keep the CPU thresholds out of reach so the healthy checks do not depend
#: on what other processes do; the threshold logic is tested with the memory thresholds.
OPS_OVERRIDES: dict[str, Any] = deep_merge(
    SUITE_CONFIG_OVERRIDES, {"monitoring": {"cpu_warning": 101.0, "cpu_critical": 102.0}}
)


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m etlplus_reference ARGS`, bounded in time."""
    cmd = [sys.executable, "-m", "etlplus_reference", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False, cwd=cwd
    )


def run_script(script: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """One of the root's generated shell scripts, bounded in time."""
    return subprocess.run(
        [str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (and no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("etlplus-reference"), lines[0]
    assert "error:" in lines[0]
    return lines[0]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def update_config(root: Path, section: str, values: dict[str, Any]) -> None:
    config_file = root / "config" / "config.json"
    config = read_json(config_file)
    config.setdefault(section, {}).update(values)
    write_json_atomic(config_file, config)


def alerts_file(root: Path) -> Path:
    return root / "logs" / f"alerts_{datetime.now(UTC):%Y%m%d}.log"


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a reaped-later child still answers kill(pid, 0))."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTarget]:
    """One reference server for this module's monitor/backup/health checks; stopped after it."""
    target = EmbeddedTarget(
        tmp_path_factory.mktemp("ops") / "deployment", config_overrides=OPS_OVERRIDES
    )
    target.start()
    try:
        yield target
    finally:
        target.stop()


@pytest.fixture
def idle_root(tmp_path: Path) -> Path:
    """An initialised root with no server (its configured port is free)."""
    root = tmp_path / "idle"
    proc = run_cli("init", root, "--port", str(free_port()), "--admin-password", "pw-123")
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture
def config_restored(server: EmbeddedTarget) -> Iterator[Path]:
    """The shared server's config file, put back as it was after the test."""
    config_file = server.root / "config" / "config.json"
    saved = config_file.read_bytes()
    yield config_file
    tmp = config_file.with_name(".config.restore.tmp")
    tmp.write_bytes(saved)
    os.replace(tmp, config_file)


# -- init -----------------------------------------------------------------------------------------


def test_init_creates_the_layout_with_flags_off(tmp_path: Path) -> None:
    root = tmp_path / "deploy"
    proc = run_cli("init", root, "--port", "18081")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(root.resolve())
    for folder in ("config", "logs", "backups", "deployment", "monitoring", "bin", "data", "run"):
        assert (root / folder).is_dir(), folder
    for script in ("deployment/rollback.sh", "monitoring/monitor.sh", "bin/etlplus"):
        mode = (root / script).stat().st_mode
        assert mode & stat.S_IXUSR, f"{script} is not executable"
        assert (root / script).read_text().startswith("#!/bin/sh\n")
    flags = read_json(root / "config" / "feature_flags.json")
    assert flags["flags"] == dict.fromkeys(FLAG_NAMES, False)
    assert flags["rollout_percentages"] == dict.fromkeys(FLAG_NAMES, 0)
    config = read_json(root / "config" / "config.json")
    assert config["server"]["port"] == 18081
    # A generated admin password: printed once, saved 0600, and the config holds only its hash.
    secret = root / "config" / "initial_admin_password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    password = secret.read_text().strip()
    assert password in proc.stdout
    admin = config["auth"]["users"]["admin"]
    assert admin["roles"] == ["admin", "operator"]
    assert verify_password(password, admin["password"])
    assert password not in json.dumps(config)

    again = run_cli("init", root)
    assert again.returncode == 2
    assert "not empty" in one_error_line(again)
    forced = run_cli("init", root, "--force", "--admin-password", "given-pw")
    assert forced.returncode == 0, forced.stderr
    assert not secret.exists(), "a given password is not written to disk"
    config = read_json(root / "config" / "config.json")
    assert verify_password("given-pw", config["auth"]["users"]["admin"]["password"])


# -- serve ----------------------------------------------------------------------------------------


def test_serve_rejects_bad_config_flags_and_root(idle_root: Path, tmp_path: Path) -> None:
    config_file = idle_root / "config" / "config.json"
    good = config_file.read_text()
    update_config(idle_root, "logging", {"level": "LOUD"})
    proc = run_cli("serve", "--root", idle_root, "--port", str(free_port()))
    assert proc.returncode == 2
    assert "logging.level" in one_error_line(proc)

    config_file.write_text(good)
    (idle_root / "config" / "feature_flags.json").write_text("{not json")
    proc = run_cli("serve", "--root", idle_root, "--port", str(free_port()))
    assert proc.returncode == 2
    assert "feature_flags.json" in one_error_line(proc)

    proc = run_cli("serve", "--root", tmp_path / "missing")
    assert proc.returncode == 2
    assert "does not exist" in one_error_line(proc)
    assert not (idle_root / "run" / "etlplus.pid").exists()


def test_serve_refuses_a_port_in_use(idle_root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("serve", "--root", idle_root, "--host", "127.0.0.1", "--port", str(port))
    assert proc.returncode == 2
    assert "already in use" in one_error_line(proc)
    assert not (idle_root / "run" / "etlplus.pid").exists()


def test_serve_records_its_pid_and_stops_cleanly_on_sigterm(idle_root: Path) -> None:
    port = free_port()
    argv = ["serve", "--root", str(idle_root), "--host", "127.0.0.1", "--port", str(port)]
    pid_file = idle_root / "run" / "etlplus.pid"
    with (idle_root / "logs" / "server.out").open("ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "etlplus_reference", *argv], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not pid_file.exists():
            assert server.poll() is None, "serve exited during startup"
            time.sleep(0.05)
        record = read_json(pid_file)
        assert record["pid"] == server.pid
        assert (record["host"], record["port"], record["argv"]) == ("127.0.0.1", port, argv)
        datetime.strptime(record["started_at"], "%Y-%m-%dT%H:%M:%SZ")
        # A second server on the same root is refused, whatever its port.
        again = run_cli("serve", "--root", idle_root, "--port", str(free_port()))
        assert again.returncode == 2
        assert "already running" in one_error_line(again)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=20) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=5)
    assert not pid_file.exists()


def test_bad_arguments_are_one_line() -> None:
    proc = run_cli("monitor", "check")
    assert proc.returncode == 2
    assert "--root" in one_error_line(proc)
    proc = run_cli("frobnicate")
    assert proc.returncode == 2
    one_error_line(proc)
    helptext = run_cli("--help").stdout
    assert "exit codes:" in helptext
    assert "a CRITICAL fired" in run_cli("monitor", "check", "--help").stdout


# -- monitor --------------------------------------------------------------------------------------


def test_monitor_check_healthy_writes_alerts(server: EmbeddedTarget) -> None:
    proc = run_script(server.root / "monitoring" / "monitor.sh", "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Result: OK" in proc.stdout
    lines = alerts_file(server.root).read_text().splitlines()
    assert lines
    assert all(ALERT_LINE.match(line) for line in lines), lines
    text = "\n".join(lines)
    for category in ("service", "resources", "websocket", "database", "logs", "flags"):
        assert f"[INFO] [{category}]" in text, f"no INFO line for {category}"
    assert "[WARNING]" not in text
    assert "[CRITICAL]" not in text
    assert (server.root / "logs" / ".monitor_state.json").is_file()


def test_monitor_check_dead_server_is_critical(idle_root: Path) -> None:
    proc = run_script(idle_root / "monitoring" / "monitor.sh", "check")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "[CRITICAL] [service]" in proc.stdout
    assert re.search(r"Z \[CRITICAL\] \[service\] down: ", alerts_file(idle_root).read_text())


def test_monitor_log_errors_warn_once(server: EmbeddedTarget) -> None:
    main(["monitor", "check", "--root", str(server.root)])  # consume what is already there
    log = server.root / "logs" / "etlplus.log"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.000")
    # O_APPEND, whole lines: the running server appends to the same file.
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"[{stamp}] [ERROR] [OpsTest] first injected failure | k=v\n")
        fh.write(f"[{stamp}] [FATAL] [OpsTest] second injected failure | k=v\n")
    assert main(["monitor", "check", "--root", str(server.root)]) == 1
    text = alerts_file(server.root).read_text()
    assert re.search(r"\[WARNING\] \[logs\] 2 new ERROR/FATAL line\(s\).*second injected", text)
    # The offsets are remembered: the same lines do not warn twice.
    assert main(["monitor", "check", "--root", str(server.root)]) == 0


def test_monitor_log_offsets_follow_rotation(
    idle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = idle_root / "logs"
    log = logs / "etlplus.log"
    log.write_text("[2026-11-29 17:04:07.000] [ERROR] [OpsTest] before rotation\n")
    main(["monitor", "check", "--root", str(idle_root)])
    assert "[logs] 1 new ERROR/FATAL line(s)" in capsys.readouterr().out
    # Rotate as the server does: the current file becomes .1 (same inode), a new file starts.
    log.rename(logs / "etlplus.log.1")
    with (logs / "etlplus.log.1").open("a") as fh:
        fh.write("[2026-11-29 17:04:08.000] [INFO] [OpsTest] last line before rotation\n")
    log.write_text(
        "[2026-11-29 17:04:09.000] [INFO] [OpsTest] fine\n"
        '{"timestamp": "2026-11-29T17:04:10Z", "level": "FATAL", "component": "OpsTest", '
        '"message": "after rotation", "context": {}}\n'
        "[2026-11-29 17:04:11.000] [ERROR] [OpsTest] not finished yet"  # no newline: skipped
    )
    main(["monitor", "check", "--root", str(idle_root)])
    out = capsys.readouterr().out
    assert "[logs] 1 new ERROR/FATAL line(s) in etlplus.log* since the last check; latest:" in out
    assert "after rotation" in out


def test_monitor_websocket_with_authentication_on(tmp_path: Path) -> None:
    overrides = deep_merge(OPS_OVERRIDES, {"auth": {"enabled": True}})
    with EmbeddedTarget(tmp_path / "deployment", config_overrides=overrides) as target:
        root = str(target.root)
        # init generated an admin password into the root: the monitor logs in with it.
        assert main(["monitor", "check", "--root", root]) == 0
        text = alerts_file(target.root).read_text()
        assert "[INFO] [websocket] connection_ack" in text
        (target.root / "config" / "initial_admin_password").unlink()
        assert main(["monitor", "check", "--root", root]) == 1
        text = alerts_file(target.root).read_text()
        assert "[WARNING] [websocket] not checked: authentication is on" in text


def test_monitor_database_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with EmbeddedTarget(
        tmp_path / "deployment", config_overrides=OPS_OVERRIDES, enable_faults=True
    ) as target:
        root = str(target.root)
        assert main(["monitor", "check", "--root", root]) == 0
        capsys.readouterr()

        def fail_db(times: int) -> None:
            with httpx.Client(base_url=target.base_url, timeout=10) as client:
                client.post("/api/_faults", json={"database_failures": 1.0})
                for _ in range(times):
                    assert client.get("/api/health/ready").status_code == 503
                client.delete("/api/_faults")
                assert client.get("/api/health/ready").status_code == 200

        fail_db(3)
        assert main(["monitor", "check", "--root", root]) == 1
        assert re.search(
            r"\[WARNING\] \[database\] 3 new connection failures since the last check",
            capsys.readouterr().out,
        )
        fail_db(11)  # the checklist's rollback trigger: more than 10 per minute
        assert main(["monitor", "check", "--root", root]) == 2
        assert "[CRITICAL] [database] 11 new connection failures" in capsys.readouterr().out


def test_monitor_invalid_flags_is_critical(
    idle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags_file = idle_root / "config" / "feature_flags.json"
    flags_file.write_text('{"flags": {"new_logger_system": "yes"}}')
    assert main(["monitor", "check", "--root", str(idle_root)]) == 2
    out = capsys.readouterr().out
    assert "[CRITICAL] [flags] invalid: config/feature_flags.json: flags.new_logger_system" in out

    write_json_atomic(
        flags_file,
        {"flags": {"new_logger_system": True}, "rollout_percentages": {"new_logger_system": 25}},
    )
    main(["monitor", "check", "--root", str(idle_root)])
    out = capsys.readouterr().out
    assert "[INFO] [flags] new_logger_system on at 25% rollout" in out
    assert "[flags] invalid" not in out


class _Receiver(BaseHTTPRequestHandler):
    """A local stand-in for a Slack webhook: records the JSON bodies it is sent."""

    received: list[Any] = []  # noqa: RUF012 - one list per test run, reset by the test

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_monitor_thresholds_and_webhook(
    server: EmbeddedTarget, config_restored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["monitor", "check", "--root", str(server.root)])  # a clean baseline for the log check
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        webhook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        update_config(
            server.root,
            "monitoring",
            {"memory_warning": 0.0001, "memory_critical": 100.0, "slack_webhook": webhook},
        )
        capsys.readouterr()
        assert main(["monitor", "check", "--root", str(server.root)]) == 1
        out = capsys.readouterr().out
        assert re.search(r"\[WARNING\] \[resources\] memory \d+\.\d% >= 0.0001%", out), out
        assert len(_Receiver.received) == 1
        assert "[WARNING] [resources] memory" in _Receiver.received[0]["text"]

        update_config(server.root, "monitoring", {"memory_critical": 0.0002})
        assert main(["monitor", "check", "--root", str(server.root)]) == 2
        assert "[CRITICAL] [resources] memory" in capsys.readouterr().out
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join(timeout=5)
    # A webhook that cannot be reached is itself a WARNING, not a crash.
    update_config(
        server.root,
        "monitoring",
        {"memory_critical": 100.0, "slack_webhook": f"http://127.0.0.1:{free_port()}/hook"},
    )
    assert main(["monitor", "check", "--root", str(server.root)]) == 1
    assert "[WARNING] [notify] Slack webhook failed" in capsys.readouterr().out


def _fake_smtp(listener: socket.socket, received: list[str]) -> None:
    """Just enough SMTP for one message: records the DATA section."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rwb") as stream:
        stream.write(b"220 localhost ready\r\n")
        stream.flush()
        while line := stream.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"DATA":
                stream.write(b"354 go on\r\n")
                stream.flush()
                data = b""
                while (chunk := stream.readline()) not in (b".\r\n", b""):
                    data += chunk
                received.append(data.decode("utf-8", "replace"))
                reply = b"250 queued\r\n"
            elif verb == b"QUIT":
                stream.write(b"221 bye\r\n")
                stream.flush()
                return
            else:
                reply = b"250 ok\r\n"
            stream.write(reply)
            stream.flush()


def test_monitor_alert_email(idle_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    received: list[str] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(10)
        thread = threading.Thread(target=_fake_smtp, args=(listener, received), daemon=True)
        thread.start()
        update_config(
            idle_root,
            "monitoring",
            {
                "alert_email": "ops@example.test",
                "smtp_host": f"127.0.0.1:{listener.getsockname()[1]}",
            },
        )
        assert main(["monitor", "check", "--root", str(idle_root)]) == 2  # no server: CRITICAL
        thread.join(timeout=10)
    assert "[INFO] [notify] alert email sent to ops@example.test" in capsys.readouterr().out
    assert len(received) == 1
    assert "To: ops@example.test" in received[0]
    assert "[CRITICAL] [service] down" in received[0]


def test_monitor_report_writes_its_file(server: EmbeddedTarget) -> None:
    proc = run_cli("monitor", "report", "--root", server.root)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == server.root / "logs"
    assert re.fullmatch(r"monitoring_report_\d{8}_\d{6}(_\d+)?\.txt", path.name)
    text = path.read_text()
    assert "== /api/health/status ==" in text
    assert '"uptime_seconds"' in text
    assert "== /api/health/metrics ==" in text


def test_monitor_start_count_and_sigterm(server: EmbeddedTarget) -> None:
    script = server.root / "monitoring" / "monitor.sh"
    proc = run_script(script, "start", "--interval", "0.2", "--count", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ETL Plus monitor check of") == 2
    assert "stopped after 2 pass(es)" in proc.stdout
    pid_file = server.root / "run" / "monitor.pid"
    assert not pid_file.exists()

    loop = subprocess.Popen(
        [str(script), "start", "--interval", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not pid_file.exists():
            time.sleep(0.05)
        assert read_json(pid_file)["pid"] == loop.pid  # the script execs: same process
        loop.send_signal(signal.SIGTERM)
        out, _ = loop.communicate(timeout=20)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait(timeout=5)
    assert "stopped after 1 pass(es)" in out
    assert not pid_file.exists()


# -- rollback -------------------------------------------------------------------------------------


def test_rollback_backup_and_verify(server: EmbeddedTarget) -> None:
    script = server.root / "deployment" / "rollback.sh"
    proc = run_script(script, "backup")
    assert proc.returncode == 0, proc.stderr
    backup = Path(proc.stdout.strip().splitlines()[-1])
    assert backup.parent == server.root / "backups"
    assert re.fullmatch(r"backup_\d{8}_\d{6}_[0-9a-f]{6}", backup.name)
    manifest = (backup / "MANIFEST.sha256").read_text().splitlines()
    listed = sorted(line.split("  ", 1)[1] for line in manifest)
    assert listed == [
        "bin/etlplus",
        "config/config.json",
        "config/feature_flags.json",
        "data/etlplus.db",
    ]
    assert os.access(backup / "bin" / "etlplus", os.X_OK)
    with contextlib.closing(sqlite3.connect(backup / "data" / "etlplus.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    assert run_script(script, "verify", backup).returncode == 0
    with (backup / "config" / "feature_flags.json").open("a") as fh:
        fh.write(" ")
    proc = run_script(script, "verify", backup.name)
    assert proc.returncode == 1
    assert "config/feature_flags.json: checksum mismatch" in one_error_line(proc)


def test_rollback_partial_each_component(
    idle_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags_file = idle_root / "config" / "feature_flags.json"
    write_json_atomic(
        flags_file,
        {
            "flags": dict.fromkeys(FLAG_NAMES, True),
            "rollout_percentages": dict.fromkeys(FLAG_NAMES, 50),
        },
    )
    rolled: set[str] = set()
    for component, flag in COMPONENT_FLAGS.items():
        before = len(list((idle_root / "backups").iterdir()))
        assert main(["rollback", "partial", component, "--root", str(idle_root)]) == 0
        out = capsys.readouterr().out
        assert f"{flag} enabled=true rollout=50 -> enabled=false rollout=0" in out
        assert len(list((idle_root / "backups").iterdir())) == before + 1, "no backup first"
        rolled.add(flag)
        flags = read_json(flags_file)
        for name in FLAG_NAMES:
            on = name not in rolled
            assert flags["flags"][name] is on, name
            assert flags["rollout_percentages"][name] == (50 if on else 0), name


def test_rollback_partial_bad_component(idle_root: Path) -> None:
    flags_file = idle_root / "config" / "feature_flags.json"
    before = flags_file.read_bytes()
    script = idle_root / "deployment" / "rollback.sh"
    for args in (("partial", "bogus"), ("partial",)):
        proc = run_script(script, *args)
        assert proc.returncode == 2
        line = one_error_line(proc)
        assert all(component in line for component in COMPONENT_FLAGS), line
    assert flags_file.read_bytes() == before
    assert list((idle_root / "backups").iterdir()) == []


def test_rollback_health_exit_codes(server: EmbeddedTarget, idle_root: Path) -> None:
    ok = run_cli("rollback", "health", "--root", server.root)
    assert ok.returncode == 0, ok.stderr
    assert "healthy" in ok.stdout

    no_pid = run_cli("rollback", "health", "--root", idle_root)
    assert no_pid.returncode == 1
    assert "not running" in one_error_line(no_pid)

    # A stale pid file: the process it names has exited.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    write_json_atomic(
        idle_root / "run" / "etlplus.pid",
        {"pid": dead.pid, "host": "127.0.0.1", "port": free_port(), "argv": []},
    )
    stale = run_cli("rollback", "health", "--root", idle_root)
    assert stale.returncode == 1
    assert "is gone" in one_error_line(stale)


@pytest.mark.slow
def test_rollback_full_restarts_and_restores(tmp_path: Path) -> None:
    target = EmbeddedTarget(tmp_path / "deployment", config_overrides=OPS_OVERRIDES)
    target.start()
    try:
        root = target.root
        script = root / "deployment" / "rollback.sh"
        flags_file = root / "config" / "feature_flags.json"
        rollout_25 = {
            "flags": dict.fromkeys(FLAG_NAMES, True),
            "rollout_percentages": dict.fromkeys(FLAG_NAMES, 25),
        }
        write_json_atomic(flags_file, rollout_25)
        backup = Path(run_script(script, "backup").stdout.strip().splitlines()[-1])
        old_pid = read_json(root / "run" / "etlplus.pid")["pid"]

        proc = run_script(script, "full")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        new_pid = read_json(root / "run" / "etlplus.pid")["pid"]
        assert new_pid != old_pid
        assert not pid_alive(old_pid)
        assert pid_alive(new_pid)
        assert read_json(flags_file) == {
            "flags": dict.fromkeys(FLAG_NAMES, False),
            "rollout_percentages": dict.fromkeys(FLAG_NAMES, 0),
        }
        assert httpx.get(f"{target.base_url}/api/health", timeout=5).json()["status"] == "healthy"
        assert run_script(script, "health").returncode == 0
        assert target.server_pids() == [new_pid], "the suite can still find (and stop) it"

        # Restore a verified backup: its flags come back, the service is restarted again.
        restored = run_script(script, "full", "--restore", backup)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"restore: config/feature_flags.json from {backup.name}" in restored.stdout
        assert read_json(flags_file) == rollout_25
        third_pid = read_json(root / "run" / "etlplus.pid")["pid"]
        assert third_pid not in (old_pid, new_pid)
        assert not pid_alive(new_pid)

        target.stop()
        assert not pid_alive(third_pid)
        assert run_script(script, "health").returncode == 1
    finally:
        target.stop()
