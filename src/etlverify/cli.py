"""The `etlverify` command: `etlverify checklist` prints the checklist map, `etlverify version`.

The checklist map with the tests behind each item needs a pytest collection; the command runs
``python -m pytest --etl-checklist`` for that (this module does not import pytest).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import TYPE_CHECKING

from etlverify import __version__
from etlverify.checklist import ChecklistError, format_map, load_checklist

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
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"etlverify {__version__}")
        return 0
    return _checklist(args)


if __name__ == "__main__":
    raise SystemExit(main())
