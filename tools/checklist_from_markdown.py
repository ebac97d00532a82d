"""Regenerate the skeleton of src/etlverify/checklist.json from the deployment checklist markdown.

Used once to create the file and again when the checklist changes: items already in the JSON keep
their id and automation fields; new items are added as "automated" for a person to review. The JSON,
not this script, is the reviewed source of truth.

The markdown is the repository's copy, docs/deployment_checklist.md, of the ETL Plus repository's
deployment/deployment_checklist.md: when the upstream checklist changes, copy it over (keeping the
first line, the note saying it is a copy), then run from the repository root

    python tools/checklist_from_markdown.py

or name both files: ``python tools/checklist_from_markdown.py CHECKLIST.md CHECKLIST.json``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: the repository's copy of the upstream checklist, and the file generated from it (the defaults)
MARKDOWN = Path("docs/deployment_checklist.md")
JSON = Path("src/etlverify/checklist.json")

SECTION_PREFIX = {
    "Pre-Deployment Preparation": "pre",
    "Deployment Steps": "deploy",
    "Post-Deployment Validation": "post",
    "Rollback Triggers and Procedures": "rollback",
    "Success Metrics": "success",
    "Communication Plan": "comms",
    "Sign-off": "signoff",
}
STOP = {
    "the",
    "a",
    "an",
    "and",
    "or",
    "with",
    "for",
    "of",
    "to",
    "in",
    "on",
    "is",
    "are",
    "if",
    "all",
    "new",
    "from",
    "file",
    "system",
    "etl",
    "plus",
    "current",
    "verify",
    "check",
    "test",
}


def slug(text: str, words: int = 3) -> str:
    text = re.sub(r"`[^`]*`", lambda m: m.group(0).strip("`").split("/")[-1].split(".")[0], text)
    toks = [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in STOP]
    return "_".join(toks[:words]) or "item"


def group_slug(title: str) -> str:
    title = re.sub(r"^\[ \]\s*", "", title)
    m = re.match(r"(Phase \d+): .*", title)
    if m:
        return m.group(1).lower().replace(" ", "")
    m = re.match(r"(\d+(?:\.\d+)?)\.?\s+(.*)", title)
    if m:
        return m.group(1).replace(".", "_") + "_" + slug(m.group(2), 2)
    return slug(title, 2)


def parse(md: str) -> list[dict[str, str]]:
    items: list[dict[str, str]] = []
    section = sub = group = ""
    phase = ""
    for line in md.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            sub = group = phase = ""
        elif line.startswith("### "):
            sub = re.sub(r"^\[ \]\s*", "", line[4:].strip())
            if sub.startswith("Phase"):
                phase = sub
                group = ""
        elif line.startswith("#### "):
            group = re.sub(r"^\[ \]\s*", "", line[5:].strip())
        elif re.match(r"^\d\. \*\*", line):
            group = re.sub(r"^\d\. \*\*(.*?):?\*\*.*", r"\1", line).rstrip(":")
        elif re.match(r"^\s*- (\[ \] )?\S", line) and section in SECTION_PREFIX:
            if section in ("Deployment Steps",) and not group:
                continue
            text = re.sub(r"^\s*- (\[ \] )?", "", line).strip()
            if (
                section == "Rollback Triggers and Procedures"
                and sub == "Rollback Procedures"
                and not group
            ):
                continue
            heading = " / ".join(x for x in (sub, group) if x)
            items.append({"section": section, "heading": heading, "phase": phase, "text": text})
    return items


def main() -> int:
    args = sys.argv[1:]
    if len(args) not in (0, 2):
        print(f"usage: python {sys.argv[0]} [CHECKLIST.md CHECKLIST.json]", file=sys.stderr)
        return 2
    md_path, json_path = (Path(args[0]), Path(args[1])) if args else (MARKDOWN, JSON)
    old = {}
    if json_path.exists():
        old = {
            i["text"] + "|" + i["heading"]: i for i in json.loads(json_path.read_text())["items"]
        }
    out = []
    seen: set[str] = set()
    for it in parse(md_path.read_text(encoding="utf-8")):
        key = it["text"] + "|" + it["heading"]
        if key in old:
            out.append(old[key])
            seen.add(old[key]["id"])
            continue
        parts = [SECTION_PREFIX[it["section"]]]
        heading_parts = it["heading"].split(" / ")
        parts += [group_slug(h) for h in heading_parts if h]
        base = ".".join(parts) + "." + slug(it["text"])
        ident, n = base, 2
        while ident in seen:
            ident, n = f"{base}_{n}", n + 1
        seen.add(ident)
        out.append({"id": ident, **it, "automation": "automated"})
    json_path.write_text(
        json.dumps(
            {"schema_version": 1, "source": MARKDOWN.as_posix(), "items": out},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"{len(out)} items -> {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
