"""The `etlverify` command: `etlverify gate DIR` decides a promotion from the summaries of one
pipeline run, `etlverify watch` watches a deployment for hours against the rollback triggers,
`etlverify rollout` drives the staged flag rollout, `etlverify checklist` prints the checklist
map, `etlverify baseline record` records the runs this machine's performance baseline still lacks,
`etlverify version` the version.

`etlverify gate reports/` checks and merges reports/summary.json (pytest),
reports/locust_summary.json (Locust) and any other summary there into one verdict, and exits with
a code of its own that no pytest or Locust code can be mistaken for (docs/exit-codes.md):
0 promote, 10 do not promote, 11 incomplete, 12 evidence missing, stale, unreadable or of another
run or target, 13 target unreachable, 14 usage. A command line `etlverify` cannot parse exits 14
as well.

The checklist map with the tests behind each item needs a pytest collection; the command runs
``python -m pytest --etl-checklist`` for that (this module does not import pytest). Likewise
`etlverify baseline record` runs ``python -m pytest -m performance`` once per missing run, each in
a fresh process, and reads what each recorded from its summary.json (exit codes in its --help).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from etlverify import __version__
from etlverify.baseline.machine import MACHINE_RUNS
from etlverify.checklist import ChecklistError, format_map, load_checklist
from etlverify.gate import EXIT_GATE_USAGE, SOURCES, main_gate

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["main"]

_GATE_EPILOG = """\
exit codes (none of them is one of pytest's 0-5 or Locust's):
  0   PROMOTE
  10  DO NOT PROMOTE: a check failed, a metric is FAIL, a rollback trigger fired
  11  INCOMPLETE: a person must decide (0 with a warning under --no-inconclusive-blocks)
  12  evidence: a required summary is missing, or a summary is unreadable, partial, older
      than --max-age, or from another pipeline run or target, or a pytest run that did not
      cover the post-deployment scope (without --allow-partial); one line each says which
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


# -- etlverify baseline record ------------------------------------------------------------------

MACHINE_STATE_PREFIX = "performance: this machine's baseline "
_STATE = re.compile(
    re.escape(MACHINE_STATE_PREFIX)
    + r"(?P<path>.+): (?:(?P<k>\d+) of (?P<n>\d+) runs recorded|unreadable)"
)
#: the options this command sets itself (and the environment variables behind them)
_OWN_OPTIONS = ("--baseline", "--baseline-record")
_OWN_ENV = ("ETLPLUS_BASELINE", "ETLPLUS_BASELINE_RECORD")
EXIT_RECORD_INCOMPLETE = 11
EXIT_RECORD_UNREACHABLE = 13
EXIT_RECORD_INTERRUPTED = 130
#: pytest's exit codes of a verification run that matter here (docs/exit-codes.md)
_PYTEST_USAGE = (2, 4, 5)
_PYTEST_UNREACHABLE = 3

_RECORD_EPILOG = f"""\
Each run is `python -m pytest -m performance --baseline machine [--base-url URL] [PYTEST_ARGS]`
in a fresh process, from the current folder (the project's), with its reports in a temporary
folder: reports/ is left alone. While this machine's baseline holds fewer than {MACHINE_RUNS}
runs, each run's measurement is added to it (its checks are INCONCLUSIVE); from run
{MACHINE_RUNS + 1} on, the performance checks are judged against it. Put pytest options after
`--`: etlverify baseline record --runs 1 -- --perf-duration 20 -k response_times

exit codes:
  0   every run recorded its measurement, or the baseline already held {MACHINE_RUNS} runs
      (the last line says how many runs it holds now)
  11  a run recorded nothing, or not every group (errors or 429s while measuring, an
      overloaded host, a refused request); its line says why, its reports are kept in the
      folder it names; after a run that recorded nothing no later run is started
  13  the target could not be reached
  14  usage: a bad option, pytest refused the arguments, or --baseline/--baseline-record among
      them (this command sets them)
  130 interrupted (Ctrl-C)

environment: ETLPLUS_BASELINE_CACHE (where machine baselines live), ETLPLUS_BASE_URL, and the
suite's other ETLPLUS_* settings, as for pytest
"""


def _run_pytest(cmd: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run one pytest command line in a fresh process: (exit code, stdout and stderr)."""
    proc = subprocess.run(list(cmd), env=dict(env), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _first_error(output: str) -> str:
    """The line of a pytest output that says what went wrong (usage errors, collection)."""
    for line in output.splitlines():
        text = line.strip()
        if text.startswith(("ERROR:", "error:", "E ", "pytest: error:")) or " error: " in text:
            return text.removeprefix("E ").strip()
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _probe(base: Sequence[str], env: Mapping[str, str]) -> tuple[str, int, int] | str:
    """(baseline file, runs it holds, runs it needs) from a `--collect-only` run's header, or
    the line that says why it could not be read."""
    code, output = _run_pytest([*base, "--collect-only"], env)
    for line in output.splitlines():
        match = _STATE.search(line)
        if match:
            k = int(match["k"] or 0)
            return match["path"], k, int(match["n"] or MACHINE_RUNS)
    return _first_error(output) if code else "no performance test was collected here"


def _read_summary(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _why_nothing(summary: Mapping[str, Any], code: int) -> str:
    """Why a run recorded nothing, from its summary: a first-use problem, the primary finding,
    the baseline already complete, or the first finding."""
    perf = summary.get("performance") or {}
    first_use = perf.get("first_use") or {}
    problems = first_use.get("not_recorded") or {}
    if problems:
        return "; ".join(f"{group}: {why}" for group, why in problems.items())
    primary = summary.get("primary_findings") or []
    if primary and isinstance(primary[0], dict) and primary[0].get("sentence"):
        return str(primary[0]["sentence"])
    if perf.get("available") and perf.get("verdict"):
        return (
            f"the baseline already held {MACHINE_RUNS} runs: this run was judged against it "
            f"({perf['verdict']})"
        )
    for key in ("blocking", "undecided"):
        for finding in summary.get(key) or []:
            if isinstance(finding, dict) and finding.get("text"):
                return str(finding["text"])
    return str(perf.get("reason") or f"pytest exit code {code}")


def _baseline_record(args: argparse.Namespace) -> int:
    """`etlverify baseline record`: the missing runs of this machine's baseline, now."""
    try:
        return _record(args)
    except KeyboardInterrupt:
        print(
            "etlverify baseline record: interrupted; the baseline keeps the runs recorded so far",
            file=sys.stderr,
        )
        return EXIT_RECORD_INTERRUPTED


def _record(args: argparse.Namespace) -> int:
    extra = [str(a) for a in args.pytest_args]
    own = [a for a in extra if a.split("=", 1)[0] in _OWN_OPTIONS]
    if own:
        print(
            f"etlverify baseline record: {own[0]} is set by this command (it records this "
            "machine's baseline); a reviewed baseline file is recorded with "
            "`pytest -m performance --baseline NAME --baseline-record`",
            file=sys.stderr,
        )
        return EXIT_GATE_USAGE
    env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
    where = ["--base-url", args.base_url] if args.base_url else []
    base = [
        sys.executable, "-m", "pytest", "-m", "performance", "-p", "no:locust",
        "--baseline", "machine", *where, *extra,
    ]  # fmt: skip
    probed = _probe(base, env)
    if isinstance(probed, str):
        print(f"etlverify baseline record: {probed}", file=sys.stderr)
        return EXIT_GATE_USAGE
    path, held, needed = probed
    missing = max(0, needed - held)
    if not missing:
        print(f"this machine's baseline {path} holds {held} runs: complete, nothing to record")
        return 0
    runs = min(missing, args.runs) if args.runs else missing
    print(
        f"recording this machine's baseline {path}: it holds {held} of {needed} runs; "
        f"{runs} run(s) of `pytest -m performance` follow, each in a fresh process",
        flush=True,
    )
    folder = Path(tempfile.mkdtemp(prefix="etlverify-baseline-record-"))
    status = 0
    for i in range(1, runs + 1):
        out = folder / f"run{i}"
        cmd = [*base, "--html", str(out / "report.html"), "--junitxml", str(out / "junit.xml")]
        t0 = time.monotonic()
        code, output = _run_pytest(cmd, env)
        out.mkdir(parents=True, exist_ok=True)
        (out / "output.txt").write_text(output, encoding="utf-8")
        spent = time.monotonic() - t0
        summary = _read_summary(out)
        first_use = ((summary or {}).get("performance") or {}).get("first_use") or {}
        groups = [str(g) for g in first_use.get("groups") or []]
        if summary is not None and groups:
            skipped = first_use.get("not_recorded") or {}
            print(
                f"run {i} of {runs}: recorded as the baseline's run {first_use.get('run')} of "
                f"{first_use.get('of', needed)} ({', '.join(groups)}; "
                f"{first_use.get('metrics', '?')} metrics) in {spent:.0f} s"
                + "".join(f"; not recorded: {g} ({why})" for g, why in skipped.items()),
                flush=True,
            )
            if skipped:  # the next run measures that group again
                status = EXIT_RECORD_INCOMPLETE
            continue
        if code == _PYTEST_UNREACHABLE:
            why = str(((summary or {}).get("error") or {}).get("message") or _first_error(output))
            print(f"run {i} of {runs}: the target could not be reached: {why}")
            status = EXIT_RECORD_UNREACHABLE
        elif summary is None or (summary.get("error") and code in _PYTEST_USAGE):
            why = str(((summary or {}).get("error") or {}).get("message") or _first_error(output))
            print(f"run {i} of {runs}: stopped before it measured: {why}")
            status = EXIT_GATE_USAGE if code in _PYTEST_USAGE else EXIT_RECORD_INCOMPLETE
        else:
            print(f"run {i} of {runs}: nothing recorded: {_why_nothing(summary, code)}")
            status = EXIT_RECORD_INCOMPLETE
        print(f"its output and reports: {out}")
        break
    after = _probe(base, env)
    if isinstance(after, str):
        print(f"this machine's baseline {path}: {after}")
    else:
        _, held, needed = after
        print(
            f"this machine's baseline {path} holds {held} of {needed} runs: "
            + (
                "complete; from now on the performance checks are judged against it"
                if held >= needed
                else f"{needed - held} more to record (etlverify baseline record)"
            )
        )
    if status == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return status


def _add_baseline(sub: Any) -> None:
    """`etlverify baseline record [--runs N] [--base-url URL] [-- PYTEST_ARGS...]`."""
    baseline = sub.add_parser("baseline", help="this machine's performance baseline")
    actions = baseline.add_subparsers(dest="baseline_command", required=True)
    rec = actions.add_parser(
        "record",
        help="record the runs this machine's baseline still lacks, now",
        description=textwrap.fill(
            "Record this machine's performance baseline now: run the performance measurement "
            f"as many times as the baseline lacks of its {MACHINE_RUNS} runs (or --runs N at "
            "most), one line per run and a last line with what the baseline holds.",
            width=78,
        ),
        epilog=_RECORD_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "--runs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="record at most N runs (default: as many as the baseline lacks)",
    )
    rec.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help="measure this deployed target (default: the embedded reference) "
        "[env ETLPLUS_BASE_URL]",
    )
    rec.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


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
    gate.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept a pytest run narrower than the post-deployment scope (-k, -m, a path); "
        "the verdict and the report say so. By default such a run is refused (12)",
    )
    gate.add_argument("--no-html", action="store_true", help="do not write DIR/signoff.html again")
    from etlverify.rollout.cli import add_parser as add_rollout
    from etlverify.watch.cli import add_parser as add_watch

    add_watch(sub)
    add_rollout(sub)
    _add_baseline(sub)
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
    if args.command == "baseline":
        return _baseline_record(args)
    if args.command == "gate":
        return main_gate(
            Path(args.directory),
            require=args.require,
            max_age=args.max_age,
            run_id=args.run_id,
            target=args.target,
            inconclusive_blocks=args.inconclusive_blocks,
            allow_partial=args.allow_partial,
            render=not args.no_html,
        )
    return _checklist(args)


if __name__ == "__main__":
    raise SystemExit(main())
