"""`etlplus-reference serve`: validate the root, bind the port, record the pid file, run uvicorn.

Everything that can be wrong before the server runs (root, config, flags, port, a server already
running on this root) is checked first and reported as one line with exit code 2, so that a deploy
script or the suite sees a clear reason instead of a traceback from deep inside uvicorn.

The pid file (`run/etlplus.pid`) is JSON::

    {"pid": 4242, "host": "127.0.0.1", "port": 8080, "argv": ["serve", "--root", "/srv/etl", ...],
     "cwd": "/srv", "started_at": "2026-11-29T17:04:07Z"}

`argv` are this command's arguments after `python -m etlplus_reference`, and `cwd` the directory
they were given in, so that `rollback full` can restart the server exactly as it was started.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from etlplus_reference.errors import ConfigError
from etlplus_reference.ops.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    OpsError,
    is_server_process,
    open_root,
    pid_alive,
    read_pid_file,
    utc_stamp,
)
from etlplus_reference.root import DeploymentRoot, write_json_atomic

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

__all__ = ["ServeOptions", "bind_socket", "serve"]


@dataclass(frozen=True)
class ServeOptions:
    """The `serve` arguments; `host`/`port` None means "from config"."""

    root: Path
    host: str | None = None
    port: int | None = None
    enable_faults: bool = False
    argv: tuple[str, ...] = ()
    #: the initial `hostile` fault settings (`--hostile MODE`), as (key, value) pairs
    hostile: tuple[tuple[str, object], ...] = ()
    #: `--fault-after`: the hostile modes start this many seconds after the server
    hostile_after_s: float | None = None


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; `OpsError` (exit 2) when the port is taken.

    The server gets this very socket, so no other process can take the port between the check
    and the start. SO_REUSEADDR matches what uvicorn does: only a live listener makes this fail.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OpsError(f"cannot resolve host {host!r}: {exc.strerror}", EXIT_USAGE) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OpsError(
                f"port {port} on {host} is already in use; stop that process or pick another "
                "--port",
                EXIT_USAGE,
            ) from None
        raise OpsError(f"cannot bind {host}:{port}: {exc.strerror or exc}", EXIT_USAGE) from None
    sock.set_inheritable(False)
    return sock


def _check_not_running(root: DeploymentRoot) -> None:
    info = read_pid_file(root.pid_file)
    if (
        info is not None
        and info.pid != os.getpid()
        and pid_alive(info.pid)
        and is_server_process(info.pid)
    ):
        raise OpsError(
            f"a server for {root.path} is already running (pid {info.pid}, "
            f"port {info.port}); stop it first",
            EXIT_USAGE,
        )


def _remove_pid_file(root: DeploymentRoot) -> None:
    # Only our own record: a restarted server may already have written its own.
    info = read_pid_file(root.pid_file)
    if info is not None and info.pid == os.getpid():
        with contextlib.suppress(OSError):
            root.pid_file.unlink()


def serve(options: ServeOptions) -> int:
    """Run the server until SIGTERM/SIGINT; the process exit code."""
    from etlplus_reference.config import load_config, load_flags

    root = open_root(options.root)
    try:
        config = load_config(root.config_file)
        load_flags(root.flags_file)
    except ConfigError as exc:
        raise OpsError(str(exc), EXIT_USAGE) from None
    host = options.host or config.host
    port = options.port if options.port is not None else config.port
    _check_not_running(root)
    sock = bind_socket(host, port)
    port = int(sock.getsockname()[1])  # the real one when the config asks for port 0
    try:
        # Imported only now: every one-line refusal above comes without loading the server.
        import uvicorn

        from etlplus_reference.app import create_app
        from etlplus_reference.httpproto import contract_protocol

        try:
            app = create_app(
                root.path,
                enable_faults=options.enable_faults,
                hostile=dict(options.hostile),
                hostile_after_s=options.hostile_after_s,
            )
        except ConfigError as exc:
            raise OpsError(str(exc), EXIT_USAGE) from None
        uv_config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            # httptools, with the contract's JSON answer to a request it cannot parse.
            http=contract_protocol(app.state.server),
            # The app decides who is a trusted proxy (config rate_limits.trusted_proxies);
            # uvicorn rewriting the client address would pre-empt that.
            proxy_headers=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=5,
            # One job's update goes to every subscriber: compressing it once per connection was
            # half of the fan-out's CPU (benchmarks/README.md), for messages of a few hundred bytes.
            ws_per_message_deflate=False,
            ws_ping_interval=config.ws_ping_interval_s,
            ws_ping_timeout=config.ws_ping_interval_s * config.ws_ping_misses,
        )
        server = uvicorn.Server(uv_config)
        write_json_atomic(
            root.pid_file,
            {
                "pid": os.getpid(),
                "host": host,
                "port": port,
                "argv": list(options.argv),
                "cwd": os.getcwd(),
                "started_at": utc_stamp(),
                "root": str(root.path),
            },
        )

        def _note(_signum: int, _frame: FrameType | None) -> None:
            # uvicorn re-raises the signal it caught after a graceful shutdown; with the default
            # handler that would kill us before the pid file is cleaned up. A signal that comes
            # before uvicorn installs its own handlers still asks for a (graceful) exit.
            server.should_exit = True

        previous = {s: signal.signal(s, _note) for s in (signal.SIGTERM, signal.SIGINT)}
        print(f"serving {root.path} on http://{host}:{port} (pid {os.getpid()})", flush=True)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:
            # uvicorn exits with 3 when the app's startup (lifespan) fails.
            print(
                f"etlplus-reference: error: server startup failed (exit {exc.code}); "
                f"see {root.logs_dir / 'etlplus.log'}",
                file=sys.stderr,
            )
            return EXIT_FAIL
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            _remove_pid_file(root)
        return EXIT_OK if server.started else EXIT_FAIL
    finally:
        sock.close()
