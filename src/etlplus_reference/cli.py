"""The `etlplus-reference` command line (also `python -m etlplus_reference`).

Every failure a person can cause (bad arguments, a missing root, an invalid config, a port in use)
ends as one line on stderr, `etlplus-reference: error: ...`, and a non-zero exit code; never a
traceback. Set ETLPLUS_DEBUG=1 to see the traceback of an unexpected internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from etlplus_reference import __version__
from etlplus_reference.ops.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    OpsError,
    open_root,
    read_settings,
)
from etlplus_reference.passwords import hash_password
from etlplus_reference.root import COMPONENT_FLAGS, init_root, write_json_atomic

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]

PROG = "etlplus-reference"

_EXIT_CODES = """\
exit codes:
  init, serve        0 ok; 1 server failure; 2 bad arguments, root, config or port in use
  monitor            0 no WARNING/CRITICAL alert; 1 WARNING was the worst; 2 a CRITICAL fired
                     (or bad arguments / root)
  rollback           0 done (full: service healthy afterwards; health: running and healthy;
                     verify: backup intact); 1 failed; 2 bad arguments, root or component
"""

_MONITOR_EPILOG = """\
exit codes: 0 no WARNING/CRITICAL alert fired; 1 WARNING was the worst; 2 a CRITICAL fired, or bad
arguments / root. Alerts (INFO too) are appended to ROOT/logs/alerts_YYYYMMDD.log (UTC date).
"""

_ROLLBACK_EPILOG = f"""\
components: {", ".join(COMPONENT_FLAGS)}
exit codes: 0 done (full: service healthy afterwards; health: running and healthy; verify: backup
intact); 1 failed (the reason is on stderr); 2 bad arguments, root or component.
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (contract: no multi-line noise)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _root_options() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--root", type=Path, required=True, help="the deployment root folder")
    common.add_argument(
        "--url",
        help="the server's base URL (default: host/port from run/etlplus.pid, else config)",
    )
    return common


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1-65535, got {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _after_s(text: str) -> float:
    from etlplus_reference.errors import ApiError
    from etlplus_reference.faults import parse_after_s

    try:
        return parse_after_s(float(text))
    except (ValueError, ApiError):
        msg = f"must be seconds, 0 < SECONDS <= 604800, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _hostile(text: str) -> tuple[str, object]:
    from etlplus_reference.faults import parse_hostile_mode

    try:
        return parse_hostile_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_SERVE_EPILOG = """\
fault injection (tests only, --enable-faults): the route /api/_faults reads (GET), merges (POST)
and clears (DELETE) the faults: latency, errors, websocket drops/delay, memory growth, database
failures, ignored config/flag changes, crash, and the `hostile` modes below. A POST with
"after_s": S applies its patch S seconds later (202; GET lists it under "scheduled", DELETE
cancels it); --fault-after S does the same for the --hostile modes.

hostile modes (--hostile MODE, repeatable; imitate a misbehaving real build):
  connection-cap=N           from the (N+1)-th connection since start: read, never answer or close
  hang-after-error           after an error response (>= 400), that connection never answers again
  non-json-errors            every error response keeps its status but has an HTML body
  ws-handshake-hang          a WebSocket upgrade on /ws is read and never answered (no 101)
  exit-after-first-job[=S]   exit (status 70) S seconds (default 1) after the first POST /api/jobs
  query-string-400           any request with a query string gets 400 with a non-contract body

exit codes: 0 clean shutdown; 1 server failure; 2 bad root/config/flags, port in use, or a server
already running on this root
"""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands init, serve, monitor, rollback)."""
    parser = _Parser(
        prog=PROG,
        description="The embedded ETL Plus reference target: server and operations scripts.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    init = commands.add_parser(
        "init", help="create a deployment root", description="Create a deployment root."
    )
    init.add_argument("dir", type=Path, metavar="DIR")
    init.add_argument("--port", type=_port, help="server.port in the config (default 8080)")
    init.add_argument("--force", action="store_true", help="overwrite the default files")
    init.add_argument(
        "--admin-password",
        metavar="P",
        help="password of the `admin` user (default: random, printed once and saved to "
        "config/initial_admin_password)",
    )

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server until SIGTERM/SIGINT.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--root", type=Path, required=True, help="the deployment root folder")
    serve.add_argument("--host", help="listen address (default: config server.host)")
    serve.add_argument("--port", type=_port, help="listen port (default: config server.port)")
    serve.add_argument(
        "--enable-faults",
        action="store_true",
        help="enable the fault-injection test route /api/_faults (tests only)",
    )
    serve.add_argument(
        "--hostile",
        action="append",
        type=_hostile,
        default=[],
        metavar="MODE",
        help="start with this hostile mode on (needs --enable-faults; repeatable; see below)",
    )
    serve.add_argument(
        "--fault-after",
        type=_after_s,
        metavar="SECONDS",
        help="the --hostile modes start SECONDS after the server (0 < SECONDS <= 604800)",
    )

    common = _root_options()
    monitor = commands.add_parser(
        "monitor",
        help="monitoring script (check, report, start)",
        description="Monitor the deployment: resources, service, WebSocket, database, log errors "
        "and flags.",
        epilog=_MONITOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor_cmds = monitor.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    monitor_cmds.required = True
    for name, text in (
        ("check", "one pass; a human summary on stdout"),
        ("report", "a pass plus status/metrics in logs/monitoring_report_*.txt (path last)"),
        (
            "start",
            "loop `check` every interval until SIGTERM or --count passes (pid in "
            "run/monitor.pid); exits with the last pass's code",
        ),
    ):
        sub = monitor_cmds.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=_MONITOR_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "start":
            sub.add_argument(
                "--interval",
                type=_positive,
                help="seconds between passes (config monitoring.interval_s)",
            )
            sub.add_argument("--count", type=_count, help="stop after N passes")

    rollback = commands.add_parser(
        "rollback",
        help="rollback script (backup, verify, partial, full, health)",
        description="Back up and roll back the deployment.",
        epilog=_ROLLBACK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rollback_cmds = rollback.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    rollback_cmds.required = True

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return rollback_cmds.add_parser(
            name,
            parents=[common],
            help=text,
            description=text,
            epilog=_ROLLBACK_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    action("backup", "back up config, flags, binary and database (path on the last line)")
    verify = action("verify", "recheck a backup against its MANIFEST.sha256")
    verify.add_argument("backup", type=Path, metavar="BACKUP_DIR")
    partial = action("partial", "turn one component's flag off (rollout 0), after a backup")
    # Optional here so that a missing component gets the same one-line answer as an unknown one.
    partial.add_argument("component", nargs="?", metavar="COMPONENT")
    full = action("full", "backup, every flag off, restart; 0 only when healthy afterwards")
    full.add_argument(
        "--restore",
        type=Path,
        metavar="BACKUP_DIR",
        help="restore config, flags and binary from this (verified) backup instead of resetting "
        "the flags",
    )
    action("health", "0 only when the server runs and /api/health is healthy")
    return parser


def _init(args: argparse.Namespace) -> int:
    target: Path = args.dir.expanduser()
    if args.admin_password is not None and not args.admin_password.strip():
        raise OpsError("--admin-password must not be empty", EXIT_USAGE)
    if target.exists() and not target.is_dir():
        raise OpsError(f"{target} exists and is not a folder", EXIT_USAGE)
    try:
        root = init_root(target, port=args.port, force=args.force)
    except FileExistsError as exc:
        raise OpsError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise OpsError(f"cannot create {target}: {exc.strerror or exc}", EXIT_USAGE) from None
    password = args.admin_password
    generated = password is None
    if password is None:
        password = secrets.token_urlsafe(18)
    config = read_settings(root).data
    config["auth"]["users"] = {
        "admin": {"password": hash_password(password), "roles": ["admin", "operator"]}
    }
    write_json_atomic(root.config_file, config)
    secret = root.admin_password_file
    with contextlib.suppress(FileNotFoundError):
        secret.unlink()
    if generated:
        # Created 0600 from the start: the password is never readable by others, even briefly.
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(password + "\n")
        print(f"admin password (shown once; also in {secret}): {password}")
    print(root.path)
    return EXIT_OK


def _serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from etlplus_reference.serve import ServeOptions, serve

    return serve(
        ServeOptions(
            root=args.root,
            host=args.host,
            port=args.port,
            enable_faults=args.enable_faults,
            argv=tuple(argv),
            hostile=tuple(args.hostile),
            hostile_after_s=args.fault_after,
        )
    )


def _monitor(args: argparse.Namespace) -> int:
    from etlplus_reference.ops import monitor

    root = open_root(args.root)
    if args.action == "check":
        result = monitor.run_check(root, args.url)
        print(result.summary())
        return result.exit_code
    if args.action == "report":
        result, path = monitor.run_report(root, args.url)
        print(result.summary())
        print(path)
        return result.exit_code
    return monitor.run_start(root, args.url, interval=args.interval, count=args.count, echo=_echo)


def _echo(text: str) -> None:
    print(text, flush=True)


def _rollback(args: argparse.Namespace) -> int:
    from etlplus_reference.ops import rollback

    root = open_root(args.root)
    if args.action == "backup":
        path = rollback.create_backup(root)
        problems = rollback.verify_backup(path)
        if problems:
            raise OpsError(f"backup {path} failed its own verification: {problems[0]}")
        print(path)
        return EXIT_OK
    if args.action == "verify":
        backup = rollback.resolve_backup(root, args.backup)
        problems = rollback.verify_backup(backup)
        for problem in problems:
            print(f"MISMATCH {problem}")
        if problems:
            raise OpsError(f"backup {backup} failed verification: {problems[0]}")
        print(f"OK {backup}")
        return EXIT_OK
    if args.action == "partial":
        backup = rollback.partial_rollback(root, args.component, _echo)
        print(backup)
        return EXIT_OK
    if args.action == "full":
        rollback.full_rollback(root, args.url, _echo, restore=args.restore)
        return EXIT_OK
    status = rollback.check_health(root, args.url)
    if not status.ok:
        raise OpsError(status.reason, EXIT_FAIL)
    print(status.reason)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the process exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "serve" and args.hostile and not args.enable_faults:
        parser.exit(
            EXIT_USAGE, f"{PROG} serve: error: --hostile needs --enable-faults (see --help)\n"
        )
    if args.command == "serve" and args.fault_after is not None and not args.hostile:
        parser.exit(
            EXIT_USAGE, f"{PROG} serve: error: --fault-after needs --hostile MODE (see --help)\n"
        )
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "serve":
            return _serve(args, args_list)
        if args.command == "monitor":
            return _monitor(args)
        return _rollback(args)
    except OpsError as exc:
        sys.stdout.flush()
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("ETLPLUS_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        print(f"{PROG}: internal error: {type(exc).__name__}: {message}", file=sys.stderr)
        return EXIT_FAIL
