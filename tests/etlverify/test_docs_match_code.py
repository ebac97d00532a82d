"""The documentation says what the code does: exit codes, `--require` sources, check counts.

docs/exit-codes.md (its tables), the exit-code lists of README.md, docs/suite-api.md,
docs/watch.md and docs/rollout.md, and every `--require SOURCE` they name are compared with the
constants the code decides with (`etlverify.gate`, `etlverify.report.verdict`,
`etlverify.locust_support`, `etlverify.watch.engine`, `etlverify.rollout.conductor`), both ways:
a code or source the docs promise must exist, and one the code has must be documented. Each code's
meaning is checked by its first words ("11 incomplete", "5 rate limited"), so a number that moves
to another meaning fails too. The README's check counts are compared with a collection of
`verification/`.

When one of these fails, fix the documentation (or the code): the message names the file, the
place and both sides.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from etlverify import gate
from etlverify.pytest_plugin import options as plugin_options
from etlverify.pytest_plugin import target as plugin_target
from etlverify.report import verdict
from etlverify.rollout import conductor
from etlverify.watch import engine

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
EXIT_CODES = DOCS / "exit-codes.md"

#: what each code must mean, by the first words of its description (case-insensitive regex)
GATE = {
    gate.EXIT_GATE_PROMOTE: r"promote",
    gate.EXIT_GATE_DO_NOT_PROMOTE: r"do not promote",
    gate.EXIT_GATE_INCOMPLETE: r"incomplete",
    gate.EXIT_GATE_EVIDENCE: r"evidence",
    gate.EXIT_GATE_UNREACHABLE: r"(target )?unreachable",
    gate.EXIT_GATE_USAGE: r"usage",
}
#: the verification run's own codes (`report.verdict`: the plugin exits with these)
PYTEST = {
    verdict.EXIT_PROMOTE: r"promote|pass",
    verdict.EXIT_CHECKS_FAILED: r"(checks )?fail|do not promote",
    verdict.EXIT_USAGE: r"usage",
    verdict.EXIT_UNREACHABLE: r"(target )?unreachable",
    verdict.EXIT_INCONCLUSIVE: r"inconclusive|incomplete",
}
#: ... and pytest's own, which the verification run keeps (docs/exit-codes.md lists them too)
PYTEST_OWN = {
    int(pytest.ExitCode.USAGE_ERROR): r"pytest's own usage error",
    int(pytest.ExitCode.NO_TESTS_COLLECTED): r"pytest's own",
}
WATCH = {
    engine.EXIT_PASS: r"pass",
    engine.EXIT_FAIL: r"fail",
    engine.EXIT_INCONCLUSIVE: r"inconclusive",
    engine.EXIT_UNREACHABLE: r"(target )?unreachable",
    engine.EXIT_USAGE: r"usage",
}
ROLLOUT = {
    conductor.EXIT_PASS: r"pass",
    conductor.EXIT_FAIL: r"fail",
    conductor.EXIT_INCOMPLETE: r"incomplete",
    conductor.EXIT_UNREACHABLE: r"(target )?unreachable",
    conductor.EXIT_USAGE: r"usage",
}


def _module_ints(path: Path, prefix: str) -> dict[str, int]:
    """Module-level ``NAME = 1`` and ``A, B = 0, 1`` integer constants whose name starts with
    `prefix`, read without importing the module (locust_support imports locust, whose import
    patches the whole process with gevent)."""
    found: dict[str, int] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs: list[tuple[ast.expr, ast.expr]] = []
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts, strict=True))
            else:
                pairs = [(target, node.value)]
            for name, value in pairs:
                if (
                    isinstance(name, ast.Name)
                    and name.id.startswith(prefix)
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, int)
                ):
                    found[name.id] = value.value
    return found


def _locust_codes() -> dict[int, str]:
    consts = _module_ints(ROOT / "src" / "etlverify" / "locust_support.py", "EXIT_")
    meanings = {
        "EXIT_PASS": r"pass",
        "EXIT_FAIL": r"fail",
        "EXIT_USAGE": r"bad",
        "EXIT_UNREACHABLE": r"unreachable",
        "EXIT_INCOMPLETE": r"incomplete",
        "EXIT_RATE_LIMITED": r"rate limited",
    }
    unknown = set(consts) - set(meanings) - {"EXIT_INCONCLUSIVE"}
    assert not unknown, f"locust_support.py has exit codes this test does not know: {unknown}"
    # EXIT_INCONCLUSIVE shares EXIT_INCOMPLETE's number (an INCONCLUSIVE with the option)
    assert consts["EXIT_INCONCLUSIVE"] == consts["EXIT_INCOMPLETE"]
    return {consts[name]: meaning for name, meaning in meanings.items()}


LOCUST = _locust_codes()


# -- reading markdown -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    """One markdown table: the `## ` heading above it, its header cells and its rows."""

    heading: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _cells(line: str) -> tuple[str, ...]:
    """The cells of a table line; ``\\|`` is a pipe inside a cell."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    parts = re.split(r"(?<!\\)\|", inner)
    return tuple(p.strip().replace("\\|", "|") for p in parts)


def tables(text: str) -> list[Table]:
    """Every table of a markdown text (a header line, a ``|---|`` line, then rows)."""
    found: list[Table] = []
    heading = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.lstrip().startswith("|") and re.fullmatch(r"\s*\|?[\s:|-]+\|?\s*", nxt):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            found.append(Table(heading, header, tuple(rows)))
            continue
        i += 1
    return found


def code_table(path: Path, heading: str) -> Table:
    """The table whose first column is `code` under the heading containing `heading`."""
    for table in tables(path.read_text(encoding="utf-8")):
        if heading in table.heading and table.header[:1] == ("code",):
            return table
    raise AssertionError(
        f"{path.relative_to(ROOT)}: no table with a 'code' column under a heading containing "
        f"{heading!r}"
    )


def code_list(path: Path, anchor: str) -> list[tuple[int, str]]:
    """The exit codes listed in prose right after `anchor` (a regex) in the file at `path`."""
    parsed = parse_code_list(path.read_text(encoding="utf-8"), anchor)
    assert parsed is not None, (
        f"{path.relative_to(ROOT)}: the exit-code list after /{anchor}/ is gone; keep a list of "
        "the codes there ('0 pass, 1 fail, ...') or update this test"
    )
    return parsed


def parse_code_list(text: str, anchor: str) -> list[tuple[int, str]] | None:
    """The list of exit codes written in prose right after `anchor` (a regex), such as
    ``0 promote, 10 do not promote, 11 incomplete (...), 14 usage;`` -> [(0, "promote"), ...];
    None when the anchor is not in the text.

    The list ends at a `;` or a sentence's `.`, or at an entry that does not start with a number;
    commas, `or` and full stops inside parentheses or backticks belong to their entry.
    """
    flat = " ".join(text.split())
    match = re.search(anchor, flat, flags=re.IGNORECASE)
    if match is None:
        return None
    rest = flat[match.end() :]
    entries: list[str] = []
    depth, quoted, current, i = 0, False, "", 0
    while i < len(rest):
        ch = rest[i]
        if ch == "`":
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            if depth == 0:
                break
            depth -= 1
        elif not quoted and depth == 0:
            if ch == ";" or (ch == "." and (i + 1 == len(rest) or rest[i + 1] == " ")):
                break
            if ch == ",":
                entries.append(current)
                current, i = "", i + 1
                continue
            if re.match(r" or (?=\d)", rest[i:]):
                entries.append(current)
                current, i = "", i + len(" or ")
                continue
        current += ch
        i += 1
    entries.append(current)
    out: list[tuple[int, str]] = []
    for entry in entries:
        m = re.match(r"\s*(\d+)\b\s*(.*)$", entry)
        if m is None:
            break
        meaning = m.group(2).strip()
        if meaning.startswith("(") and meaning.endswith(")"):  # "2 (usage)"
            meaning = meaning[1:-1].strip()
        out.append((int(m.group(1)), meaning))
    return out


def _check(
    where: str, documented: list[tuple[int, str]], expected: dict[int, str], what: str
) -> None:
    """Documented codes == the code's, and each documented meaning starts as it should."""
    codes = [c for c, _ in documented]
    assert len(codes) == len(set(codes)), f"{where}: a code is listed twice: {codes}"
    missing = sorted(set(expected) - set(codes))
    extra = sorted(set(codes) - set(expected))
    if missing or extra:
        raise AssertionError(
            f"{where}: {what} documented as {sorted(codes)}, the code has {sorted(expected)} "
            f"(undocumented: {missing}, not in the code: {extra})"
        )
    for code, meaning in documented:
        if meaning and not re.match(expected[code], meaning, flags=re.IGNORECASE):
            raise AssertionError(
                f"{where}: {what} {code} is documented as {meaning[:80]!r}, but in the code "
                f"{code} means /{expected[code]}/"
            )


def _rows(table: Table, column: int = 1) -> list[tuple[int, str]]:
    return [(int(row[0]), row[column].strip("` ")) for row in table.rows]


# -- docs/exit-codes.md ---------------------------------------------------------------------------


def test_gate_table_matches_gate_codes() -> None:
    table = code_table(EXIT_CODES, "etlverify gate")
    _check("docs/exit-codes.md, the gate's table", _rows(table), GATE, "gate exit code")


def test_verification_run_table_matches_the_plugin() -> None:
    table = code_table(EXIT_CODES, "The verification run")
    _check(
        "docs/exit-codes.md, the verification run's table",
        _rows(table),
        PYTEST | PYTEST_OWN,
        "pytest exit code",
    )


def test_plugin_modules_agree_with_the_verdict_codes() -> None:
    """The plugin's own copies of the numbers are the verdict module's."""
    assert plugin_options.EXIT_USAGE == verdict.EXIT_USAGE
    assert plugin_target.EXIT_UNREACHABLE == verdict.EXIT_UNREACHABLE
    assert verdict.EXIT_INCONCLUSIVE == gate.EXIT_GATE_INCOMPLETE  # "the same number" (docs)


def test_load_run_table_matches_locust_support() -> None:
    table = code_table(EXIT_CODES, "The load run")
    _check("docs/exit-codes.md, the load run's table", _rows(table), LOCUST, "Locust exit code")


def test_watch_and_rollout_table_matches_their_codes() -> None:
    table = code_table(EXIT_CODES, "etlverify watch")
    assert [h.strip("`") for h in table.header[1:3]] == ["etlverify watch", "etlverify rollout"]
    _check("docs/exit-codes.md, the watch column", _rows(table, 1), WATCH, "watch exit code")
    _check("docs/exit-codes.md, the rollout column", _rows(table, 2), ROLLOUT, "rollout exit code")


def test_gate_order_names_every_gate_code() -> None:
    """'When several apply, the first in the order 14, 12, 13, 10, 11 wins' covers every code."""
    text = " ".join(EXIT_CODES.read_text(encoding="utf-8").split())
    match = re.search(r"the first in the order ([\d, ]+) wins", text)
    assert match, "docs/exit-codes.md: the sentence giving the gate's order of codes is gone"
    order = {int(n) for n in re.findall(r"\d+", match.group(1))}
    assert order == set(GATE) - {gate.EXIT_GATE_PROMOTE}


# -- prose lists: README.md, docs/suite-api.md, docs/watch.md, docs/rollout.md --------------------

PROSE_LISTS = [
    (README, r"can be mistaken for:\s*", GATE, "gate exit code"),
    (README, r"The verification run itself exits\s*", PYTEST, "pytest exit code"),
    (README, r"one verdict line per metric and exits\s*", LOCUST, "Locust exit code"),
    (
        DOCS / "suite-api.md",
        r"a verdict section in the terminal, and its exit code \(",
        PYTEST,
        "pytest exit code",
    ),
    (DOCS / "watch.md", r"Exit codes \([^)]*\):\s*", WATCH, "watch exit code"),
    (DOCS / "rollout.md", r"Exit codes:\s*", ROLLOUT, "rollout exit code"),
]


@pytest.mark.parametrize(
    ("path", "anchor", "expected", "what"),
    PROSE_LISTS,
    ids=[f"{p.name}:{w.split()[0]}" for p, _, _, w in PROSE_LISTS],
)
def test_prose_exit_code_lists_match_the_code(
    path: Path, anchor: str, expected: dict[int, str], what: str
) -> None:
    documented = code_list(path, anchor)
    _check(f"{path.relative_to(ROOT)} (after /{anchor}/)", documented, expected, what)


def test_code_list_parser() -> None:
    """The prose parser itself: parentheses, backticks, `or`, line breaks, the end of the list."""
    text = (
        "It exits 0 pass, 1 fail (a, b), 2 bad option or\nfile, 3 (`x; y. (` z) or 11 (INCOMPLETE"
        "\nunder `--x`). 12 not this"
    )
    assert parse_code_list(text, r"exits\s*") == [
        (0, "pass"),
        (1, "fail (a, b)"),
        (2, "bad option or file"),
        (3, "`x; y. (` z"),
        (11, "INCOMPLETE under `--x`"),
    ]
    assert parse_code_list("exits 0 PROMOTE, 14 usage; see", r"exits\s*") == [
        (0, "PROMOTE"),
        (14, "usage"),
    ]
    assert parse_code_list("no list here", r"exits\s*") is None


def test_table_parser() -> None:
    text = "## A\n\n| code | meaning |\n|---|---|\n| 0 | a \\| b |\n| 1 | c |\n\ntext\n"
    assert tables(text) == [Table("A", ("code", "meaning"), (("0", "a | b"), ("1", "c")))]


# -- --require SOURCE -----------------------------------------------------------------------------


def _requires(text: str) -> set[str]:
    """The sources named as ``--require SOURCE``, except on lines that give one as an example of
    a usage error (the gate's exit code 14 row: ``--require nose``)."""
    lines = [ln for ln in text.splitlines() if "usage" not in ln.lower()]
    return set(re.findall(r"--require[ =]`?([a-z][\w-]*)", "\n".join(lines)))


def test_exit_codes_md_documents_every_require_source() -> None:
    text = EXIT_CODES.read_text(encoding="utf-8")
    synopsis = set(re.findall(r"\[--require ([\w-]+)\]", text))
    assert synopsis == set(gate.SOURCES), (
        f"docs/exit-codes.md: the gate's synopsis lists --require {sorted(synopsis)}, "
        f"gate.SOURCES has {sorted(gate.SOURCES)}"
    )
    bullet = re.search(r"^- `--require SOURCE`.*?(?=^- |^\s*$)", text, flags=re.M | re.S)
    assert bullet, "docs/exit-codes.md: the '- `--require SOURCE`' bullet is gone"
    mapping = dict(re.findall(r"`([\w-]+)`\s*->\s*`([\w.-]+)`", bullet.group(0)))
    assert mapping == gate.SOURCES, (
        f"docs/exit-codes.md: --require SOURCE -> file documented as {mapping}, "
        f"gate.SOURCES is {gate.SOURCES}"
    )


def test_readme_names_every_require_source() -> None:
    named = _requires(README.read_text(encoding="utf-8"))
    assert named == set(gate.SOURCES), (
        f"README.md names --require {sorted(named)}, gate.SOURCES has {sorted(gate.SOURCES)} "
        f"(unknown: {sorted(named - set(gate.SOURCES))}, "
        f"not mentioned: {sorted(set(gate.SOURCES) - named)})"
    )


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_docs_name_only_known_require_sources(path: Path) -> None:
    unknown = _requires(path.read_text(encoding="utf-8")) - set(gate.SOURCES)
    assert not unknown, f"docs/{path.name} names --require {sorted(unknown)}, not in gate.SOURCES"


# -- check counts ---------------------------------------------------------------------------------

_COLLECT = """
import json, sys
import pytest

class Recorder:
    def pytest_collection_finish(self, session):
        self.items = [
            {"post_deploy": i.get_closest_marker("post_deploy") is not None,
             "destructive": i.get_closest_marker("destructive") is not None}
            for i in session.items
        ]

recorder = Recorder()
code = pytest.main(["--collect-only", "-q", "verification"], plugins=[recorder])
print("ETLVERIFY-COLLECTED " + json.dumps(recorder.items))
sys.exit(int(code))
"""


@pytest.fixture(scope="module")
def collected() -> list[dict[str, bool]]:
    """`verification/` collected in a fresh process, each test with its (derived) markers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETLPLUS_")}
    proc = subprocess.run(
        [sys.executable, "-c", _COLLECT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next(
        (ln for ln in proc.stdout.splitlines() if ln.startswith("ETLVERIFY-COLLECTED ")), None
    )
    if proc.returncode != 0 or line is None:
        raise AssertionError(
            f"collecting verification/ failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
            f"\n{proc.stderr[-2000:]}"
        )
    items: list[dict[str, bool]] = json.loads(line.split(" ", 1)[1])
    return items


def _readme_numbers(pattern: str) -> list[int]:
    text = " ".join(README.read_text(encoding="utf-8").split())
    return [int(n) for n in re.findall(pattern, text)]


def test_readme_check_counts_match_the_collection(collected: list[dict[str, bool]]) -> None:
    total = len(collected)
    post = [i for i in collected if i["post_deploy"]]
    destructive = sum(i["destructive"] for i in post)
    every = _readme_numbers(r"every section, (\d+) checks")
    assert every, (
        "README.md no longer says how many checks `pytest` runs ('every section, N checks')"
    )
    assert set(every) == {total}, f"README.md says `pytest` runs {every} checks; {total} collected"
    post_counts = _readme_numbers(r"(\d+) checks, the performance section first") + _readme_numbers(
        r"`pytest -m post_deploy` \((\d+) checks"
    )
    assert post_counts, "README.md no longer says how many checks `pytest -m post_deploy` runs"
    assert set(post_counts) == {len(post)}, (
        f"README.md says `pytest -m post_deploy` runs {post_counts} checks; {len(post)} collected"
    )
    said = _readme_numbers(r"`pytest -m post_deploy` \(\d+ checks, (\d+) of them destructive")
    assert set(said) <= {destructive}, (
        f"README.md says {said} post_deploy checks are destructive; {destructive} are marked so"
    )
