"""Evidence for the sign-off report: redacted, bounded excerpts of what each test saw.

Every text that leaves a test for a report goes through `scrub()`: JSON token/password values,
bearer tokens, ``Authorization`` headers, ``password=`` parameters and the literal secrets of the
run (ETLPLUS_TOKEN, ETLPLUS_PASSWORD, tokens obtained by login) become ``***``. A curl line's
``$ETLPLUS_TOKEN`` reference is kept: it names the variable, not the secret.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from etlverify.client import redact

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["EVIDENCE_LIMIT", "performance_lines", "scrub", "section_evidence", "truncate"]

#: characters kept of one evidence block (the whole text stays in report.html / junit.xml)
EVIDENCE_LIMIT = 4000
_AUTH_HEADER = re.compile(
    r"""(?i)(authorization["']?\s*[:=]\s*["']?)(?!\*\*\*)(?!Bearer\s+\$)(?!\$)"""
    r"""(?:(?:Bearer|Basic|Token|Digest)\s+)?[^\s"',}]+"""
)
_PASSWORD_PARAM = re.compile(r"(?i)\b((?:password|passwd|token|secret|api_key)=)[^&\s\"']+")
#: report sections worth showing: captured stdout and sections tests add themselves
_SKIP_SECTIONS = ("Captured log", "Captured stderr")


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every secret the run knows of, and every token-looking value, as ``***``."""
    text = redact(text, secrets)
    text = _AUTH_HEADER.sub(r"\1***", text)
    return _PASSWORD_PARAM.sub(r"\1***", text)


def truncate(text: str, limit: int = EVIDENCE_LIMIT) -> str:
    """At most `limit` characters, saying how much was cut."""
    text = text.strip("\n")
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters in report.html)"


def section_evidence(sections: Sequence[tuple[str, str]]) -> list[str]:
    """Captured stdout and custom report sections (``title:`` + content), once per title."""
    out: list[str] = []
    seen: set[str] = set()
    for title, content in sections:
        if title in seen or title.startswith(_SKIP_SECTIONS) or not content.strip():
            continue
        seen.add(title)
        out.append(f"{title.removeprefix('Captured ')}:\n{content.rstrip()}")
    return out


def performance_lines(value: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Parse a ``performance`` user property (JSON: measured lines, verdicts) into lines and
    verdict dicts; unparseable values come back as one line."""
    try:
        data = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return [str(value)], []
    if not isinstance(data, dict):
        return [str(value)], []
    lines = [str(x) for x in data.get("measured") or []]
    verdicts = [v for v in data.get("verdicts") or [] if isinstance(v, dict)]
    return lines, verdicts
