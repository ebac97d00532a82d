"""The `etlverify` command: `etlverify gate DIR` decides a promotion from the summaries of one
pipeline run, `etlverify watch` watches a deployment for hours against the rollback triggers,
`etlverify rollout` drives the staged flag rollout, `etlverify checklist` prints the checklist
map, `etlverify version` the version.

`etlverify gate reports/` checks and merges reports/summary.json (pytest),
reports/locust_summary.json (Locust) and any other summary there into one verdict, and exits with
a code of its own that no pytest or Locust code can be mistaken for (docs/exit-codes.md):
0 promote, 10 do not promote, 11 incomplete, 12 evidence missing, stale, unreadable or of another
run or target, 13 target unreachable, 14 usage. A command line `etlverify` cannot parse exits 14
as well.

The checklist map with the tests behind each item needs a pytest collection; the command runs
``python -m pytest --etl-checklist`` for that (this module does not import pytest).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from etlverify import __version__
from etlverify.checklist import ChecklistError, format_map, load_checklist
from etlverify.gate import EXIT_GATE_USAGE, SOURCES, main_gate

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

_GATE_EPILOG = """\
exit codes (none of them is one of pytest's 0-5 or Locust's):
  0   PROMOTE
  10  DO NOT PROMOTE: a check failed, a metric is FAIL, a rollback trigger fired
  11  INCOMPLETE: a person must decide (0 with a warning under --no-inconclusive-blocks)
  12  evidence: a required summary is missing, or a summary is unreadable, partial, older
      than --max-age, or from another pipeline run or target (one line each says which)
  13  target unreachable (a step recorded it)
  14  usage: a bad option or environment variable of the gate itself

environment: ETLPLUS_PIPELINE_RUN_ID (set once by CI for all steps; default of --run-id),
ETLPLUS_BASE_URL (default of --target), ETLPLUS_INCONCLUSIVE_BLOCKS (1/0)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a command line it cannot parse exits `EXIT_GATE_USAGE`, not 2 (2 is a
    pytest/Locust code in the same pipeline)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_GATE_USAGE, f"{self.prog}: error: {message}\n")


def _description() -> str:
    """The docstring's first paragraph, whole (argparse wraps it)."""
    return " ".join((__doc__ or "").strip().split("\n\n", 1)[0].split())


def _checklist(args: argparse.Namespace) -> int:
    if args.items_only:
        try:
            checklist = load_checklist()
        except ChecklistError as exc:
            print(f"etlverify: {exc}", file=sys.stderr)
            return 2
        try:
            for line in format_map(checklist, {}):
                print(line)
        except BrokenPipeError:  # `etlverify checklist --items-only | head`
            sys.stderr.close()
        return 0
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--etl-checklist",
        "-q",
        "-p",
        "no:locust",
        *args.pytest_args,
    ]
    return subprocess.call(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _Parser(prog="etlverify", description=_description())
    sub = parser.add_subparsers(dest="command", required=True)
    checklist = sub.add_parser("checklist", help="print the checklist map (items -> tests)")
    checklist.add_argument(
        "--items-only", action="store_true", help="print the items without collecting tests"
    )
    checklist.add_argument("pytest_args", nargs="*", help="extra pytest arguments (paths...)")
    sub.add_parser("version", help="print the etlverify version")
    gate = sub.add_parser(
        "gate",
        help="check and merge a pipeline run's summaries into one verdict and exit code",
        description=textwrap.fill(
            "Read the summaries in DIR (summary.json from pytest -m post_deploy, "
            "locust_summary.json from the Locust run, watch_summary.json), refuse any that is "
            "missing (when required), unreadable, partial, stale or from another pipeline run "
            "or target, merge the rest, print the verdict with what blocks it, and write "
            "DIR/signoff.html again.",
            width=78,
        ),
        epilog=_GATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gate.add_argument("directory", nargs="?", default="reports", help="the reports folder")
    gate.add_argument(
        "--require",
        action="append",
        choices=tuple(SOURCES),
        metavar="SOURCE",
        help=f"a summary that must be there ({', '.join(SOURCES)}); repeatable; replaces the "
        "default, which is pytest",
    )
    gate.add_argument(
        "--max-age",
        metavar="DURATION",
        default=None,
        help="refuse a summary whose run finished longer ago (90s, 30m, 6h, 2d; default 24h)",
    )
    gate.add_argument(
        "--run-id",
        metavar="ID",
        default=None,
        help="the pipeline run every summary must come from [env ETLPLUS_PIPELINE_RUN_ID]",
    )
    gate.add_argument(
        "--target",
        metavar="URL",
        default=None,
        help="the target every summary must have verified [env ETLPLUS_BASE_URL]",
    )
    blocks = gate.add_mutually_exclusive_group()
    blocks.add_argument(
        "--inconclusive-blocks",
        dest="inconclusive_blocks",
        action="store_const",
        const=True,
        default=None,
        help="INCOMPLETE exits 11 (the default) [env ETLPLUS_INCONCLUSIVE_BLOCKS]",
    )
    blocks.add_argument(
        "--no-inconclusive-blocks",
        dest="inconclusive_blocks",
        action="store_const",
        const=False,
        help="INCOMPLETE exits 0 with a warning (a person has decided)",
    )
    gate.add_argument("--no-html", action="store_true", help="do not write DIR/signoff.html again")
    from etlverify.rollout.cli import add_parser as add_rollout
    from etlverify.watch.cli import add_parser as add_watch

    add_watch(sub)
    add_rollout(sub)
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"etlverify {__version__}")
        return 0
    if args.command == "rollout":
        from etlverify.rollout.cli import main_rollout

        return main_rollout(args)
    if args.command == "watch":
        from etlverify.watch.cli import main_watch

        return main_watch(args)
    if args.command == "gate":
        return main_gate(
            Path(args.directory),
            require=args.require,
            max_age=args.max_age,
            run_id=args.run_id,
            target=args.target,
            inconclusive_blocks=args.inconclusive_blocks,
            render=not args.no_html,
        )
    return _checklist(args)


if __name__ == "__main__":
    raise SystemExit(main())
