"""The `etlverify` command: `etlverify gate DIR` decides a promotion, `etlverify checklist` prints
the checklist map, `etlverify version`.

`etlverify gate reports/` merges reports/summary.json (pytest) and reports/locust_summary.json
(Locust) into one verdict and exits with its code (docs/exit-codes.md): 0 promote, 1 checks
failed, 2 usage or configuration error, 3 target unreachable, 4 inconclusive (when it blocks).

The checklist map with the tests behind each item needs a pytest collection; the command runs
``python -m pytest --etl-checklist`` for that (this module does not import pytest).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from etlverify import __version__
from etlverify.checklist import ChecklistError, format_map, load_checklist
from etlverify.gate import main_gate

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


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
    parser = argparse.ArgumentParser(prog="etlverify", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    checklist = sub.add_parser("checklist", help="print the checklist map (items -> tests)")
    checklist.add_argument(
        "--items-only", action="store_true", help="print the items without collecting tests"
    )
    checklist.add_argument("pytest_args", nargs="*", help="extra pytest arguments (paths...)")
    sub.add_parser("version", help="print the etlverify version")
    gate = sub.add_parser(
        "gate",
        help="merge a run's pytest and Locust summaries into one verdict and exit code",
        description="Read DIR/summary.json (pytest -m post_deploy) and DIR/locust_summary.json "
        "(the Locust run), print the verdict with what blocks it, write DIR/signoff.html again, "
        "and exit 0 promote, 1 checks failed, 2 usage or configuration error, 3 target "
        "unreachable, 4 inconclusive (when inconclusive blocks).",
    )
    gate.add_argument("directory", nargs="?", default="reports", help="the reports folder")
    blocks = gate.add_mutually_exclusive_group()
    blocks.add_argument(
        "--inconclusive-blocks",
        dest="inconclusive_blocks",
        action="store_const",
        const=True,
        default=None,
        help="INCOMPLETE exits 4 [env ETLPLUS_INCONCLUSIVE_BLOCKS; default: what the pytest "
        "run recorded]",
    )
    blocks.add_argument(
        "--no-inconclusive-blocks",
        dest="inconclusive_blocks",
        action="store_const",
        const=False,
        help="INCOMPLETE exits 0 with a warning",
    )
    gate.add_argument("--no-html", action="store_true", help="do not write DIR/signoff.html again")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"etlverify {__version__}")
        return 0
    if args.command == "gate":
        return main_gate(
            Path(args.directory),
            inconclusive_blocks=args.inconclusive_blocks,
            render=not args.no_html,
        )
    return _checklist(args)


if __name__ == "__main__":
    raise SystemExit(main())
