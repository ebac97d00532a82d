"""The deployment checklist as data, and its mapping to tests.

`checklist.json` (beside this module) holds every item of the deployment checklist with a stable id.
Tests name the items they verify with ``@pytest.mark.checklist("id", ...)``; this module validates
the file and finds traceability gaps (an automated item no test covers, a test naming an unknown
item). An item's status in a run is decided in one place, `etlverify.report.verdict.item_status`.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from pathlib import Path

__all__ = [
    "AUTOMATIONS",
    "POST_DEPLOY_PREFIXES",
    "Checklist",
    "ChecklistError",
    "Item",
    "TestOutcome",
    "load_checklist",
]

AUTOMATIONS = ("automated", "manual", "n/a")
#: the ids of the post-deployment scope (`pytest -m post_deploy`): post-deployment validation,
#: rollback triggers and procedures, success criteria. A test naming such an item is marked
#: ``post_deploy``; `etlverify gate` requires every automated one of them by default.
POST_DEPLOY_PREFIXES = ("post.", "rollback.", "success.")
_ID = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")


class ChecklistError(ValueError):
    """checklist.json is malformed; the message names the item and the problem."""


@dataclass(frozen=True)
class Item:
    """One checklist line."""

    id: str
    section: str
    heading: str
    phase: str
    text: str
    automation: str
    signed_by: str = ""
    reason: str = ""
    #: the checklist marks it optional: when its checks skip (not set up), it is n/a, not undecided
    optional: bool = False

    @property
    def automated(self) -> bool:
        """True when the suite is expected to verify this item."""
        return self.automation == "automated"


@dataclass(frozen=True)
class TestOutcome:
    """The outcome of one test (pytest vocabulary: passed, failed, skipped, error, xfailed...)."""

    __test__ = False  # not a pytest test class despite its name

    nodeid: str
    outcome: str
    reason: str = ""
    item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Checklist:
    """All items, in checklist order."""

    items: tuple[Item, ...]
    source: str = ""
    _by_id: Mapping[str, Item] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {i.id: i for i in self.items})

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __getitem__(self, item_id: str) -> Item:
        return self._by_id[item_id]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> tuple[str, ...]:
        """Every id, in order."""
        return tuple(i.id for i in self.items)

    def suggest(self, unknown: str) -> str | None:
        """The known id closest to `unknown`, if any is close enough to be a likely typo."""
        close = difflib.get_close_matches(unknown, self.ids, n=1, cutoff=0.6)
        return close[0] if close else None

    def unknown_ids(self, ids: Iterable[str]) -> list[str]:
        """The ids in `ids` that name no item."""
        return [i for i in ids if i not in self._by_id]

    def untested(self, tested_ids: Iterable[str]) -> list[Item]:
        """Automated items that no test names."""
        tested = set(tested_ids)
        return [i for i in self.items if i.automated and i.id not in tested]

    def post_deploy_scope(self) -> tuple[str, ...]:
        """The automated items that `pytest -m post_deploy` is meant to cover, in order."""
        return tuple(
            i.id for i in self.items if i.automated and i.id.startswith(POST_DEPLOY_PREFIXES)
        )

    def sections(self) -> list[str]:
        """Section names in order of first appearance."""
        return list(dict.fromkeys(i.section for i in self.items))


def _item(raw: Any, index: int) -> Item:
    if not isinstance(raw, dict):
        raise ChecklistError(f"items[{index}]: expected an object, got {type(raw).__name__}")
    ident = raw.get("id")
    where = f"items[{index}] ({ident!r})"
    for key in ("id", "section", "text", "automation"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ChecklistError(f"{where}: field {key!r} must be a non-empty string")
    if not _ID.match(raw["id"]):
        raise ChecklistError(f"{where}: id must be a dotted lower-case slug")
    if raw["automation"] not in AUTOMATIONS:
        raise ChecklistError(f"{where}: automation must be one of {', '.join(AUTOMATIONS)}")
    if raw["automation"] == "manual" and not raw.get("signed_by"):
        raise ChecklistError(f"{where}: a manual item needs 'signed_by'")
    if raw["automation"] == "n/a" and not raw.get("reason"):
        raise ChecklistError(f"{where}: an n/a item needs a 'reason'")
    return Item(
        id=raw["id"],
        section=raw["section"],
        heading=str(raw.get("heading", "")),
        phase=str(raw.get("phase", "")),
        text=raw["text"],
        automation=raw["automation"],
        signed_by=str(raw.get("signed_by", "")),
        reason=str(raw.get("reason", "")),
        optional=raw.get("optional") is True,
    )


def parse_checklist(data: Any) -> Checklist:
    """Validate parsed checklist.json content."""
    if not isinstance(data, dict) or data.get("schema_version") != 1:
        raise ChecklistError("checklist: expected an object with schema_version 1")
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise ChecklistError("checklist: 'items' must be a non-empty list")
    items = tuple(_item(raw, i) for i, raw in enumerate(raw_items))
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ChecklistError(f"checklist: duplicate id {item.id!r}")
        seen.add(item.id)
    return Checklist(items, str(data.get("source", "")))


_CACHE: dict[str, Checklist] = {}


def load_checklist(path: Path | None = None) -> Checklist:
    """Load and validate checklist.json (the packaged one by default; cached per path)."""
    key = str(path) if path else ""
    if key not in _CACHE:
        if path is None:
            text = resources.files("etlverify").joinpath("checklist.json").read_text("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ChecklistError(f"checklist: invalid JSON: {exc}") from None
        _CACHE[key] = parse_checklist(data)
    return _CACHE[key]


def format_map(checklist: Checklist, tests_by_item: Mapping[str, Sequence[str]]) -> list[str]:
    """Text lines of the checklist map: section, then each item with its automation and tests."""
    lines: list[str] = []
    for section in checklist.sections():
        lines.append(f"## {section}")
        for item in (i for i in checklist.items if i.section == section):
            tests = tests_by_item.get(item.id, ())
            if item.automated:
                mark = f"{len(tests)} test(s)" if tests else "NO TEST"
            else:
                mark = f"{item.automation} ({item.signed_by or item.reason})"
            lines.append(f"  {item.id}  [{mark}]  {item.text}")
            lines.extend(f"      {t}" for t in tests)
    return lines
