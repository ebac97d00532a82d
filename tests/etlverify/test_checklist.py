"""checklist.json: valid, complete against the markdown checklist, traceable both ways."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from etlverify.checklist import load_checklist
from etlverify.report.summary import Status, TestRecord
from etlverify.report.verdict import build_items

ROOT = Path(__file__).resolve().parents[2]
#: the repository's copy of the ETL Plus repository's deployment/deployment_checklist.md
MARKDOWN = ROOT / "docs" / "deployment_checklist.md"
SUITES = ROOT / "verification"


def _markdown_items(text: str) -> list[str]:
    """Every checkbox line and every bullet under the rollback procedures, as plain text."""
    items: list[str] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        match = re.match(r"^\s*- (\[ \] )?(.+)$", line)
        if not match or section in ("Overview", "Emergency Contacts", "Sign-off"):
            continue
        if match.group(1) or section == "Rollback Triggers and Procedures":
            items.append(match.group(2).strip())
    return items


def test_checklist_loads_and_ids_are_unique() -> None:
    checklist = load_checklist()
    assert len(checklist) == len(set(checklist.ids)) >= 100
    assert all(i.automation in ("automated", "manual", "n/a") for i in checklist.items)


def test_every_markdown_item_is_in_checklist_json() -> None:
    """The repository's copy of the checklist is part of a clone: never skipped."""
    items = _markdown_items(MARKDOWN.read_text(encoding="utf-8"))
    assert len(items) >= 100
    texts = {i.text for i in load_checklist().items}
    missing = [t for t in items if t not in texts]
    assert not missing, f"items of {MARKDOWN.name} missing from checklist.json: {missing}"


def test_checklist_copy_says_where_it_comes_from() -> None:
    first = MARKDOWN.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("<!--"), first
    assert "deployment/deployment_checklist.md" in first, first
    assert "ETL Plus repository" in first, first


def _marker_ids() -> dict[str, list[str]]:
    """checklist ids named in verification/ -> the files naming them (static, no collection)."""
    found: dict[str, list[str]] = {}
    for path in SUITES.rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "checklist"
            ):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        found.setdefault(arg.value, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_test_names_known_items() -> None:
    checklist = load_checklist()
    unknown = {i: files for i, files in _marker_ids().items() if i not in checklist}
    assert not unknown, f"tests name unknown checklist items: {unknown}"


def test_every_automated_item_of_my_sections_has_a_test() -> None:
    """Pre-deployment and Phase 1 are complete; the other sections are checked by their suites."""
    checklist = load_checklist()
    tested = set(_marker_ids())
    mine = [
        i for i in checklist.items if i.automated and (i.id.startswith(("pre.", "deploy.phase1.")))
    ]
    assert [i.id for i in mine if i.id not in tested] == []


def test_untested_automated_items_are_reported() -> None:
    checklist = load_checklist()
    untested = checklist.untested(set(_marker_ids()))
    assert all(i.automated for i in untested)


def test_results_status_rules() -> None:
    """One model of the evidence: item statuses come from `report.verdict` only."""
    checklist = load_checklist()
    a, b, c = [i.id for i in checklist.items if i.automated][:3]
    manual = next(i.id for i in checklist.items if i.automation == "manual")
    t1, t2 = TestRecord("t1", "passed"), TestRecord("t2", "failed", "t2: broke")
    t3 = TestRecord("t3", "skipped", "needs --deploy-root")
    by_item = {a: [t1, t2], b: [t2], c: [t3], manual: [TestRecord("t4", "passed")]}
    by_id = {r.id: r for r in build_items(checklist, by_item, selected=(a, b, c))}
    assert by_id[a].status is Status.FAILED
    assert by_id[b].status is Status.FAILED
    assert by_id[c].status is Status.SKIPPED
    assert by_id[c].reason == "needs --deploy-root"
    assert by_id[manual].status is Status.MANUAL
    others = [r for r in by_id.values() if r.automation == "automated" and r.id not in (a, b, c)]
    assert all(r.status is Status.NOT_RUN and not r.in_scope for r in others)


def test_suggest_close_ids() -> None:
    checklist = load_checklist()
    assert checklist.suggest("pre.1_environment_setup.backup_intgrity") == (
        "pre.1_environment_setup.backup_integrity"
    )
