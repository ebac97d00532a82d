"""Post-deployment functional testing: log file management and rotation (contract section 9).

Checklist "1. Functional Testing": "Check log file management and rotation". The log file exists,
every line of every file (current and rotated) is a well-formed TEXT or JSON line, the rotation
settings are sane, and with a lowered `max_file_size` the server rotates without losing or splitting
a line.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest

from .support import parse_log_line, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from .support import AppLog

ITEM = "post.1_functional_testing.log_management_rotation"

pytestmark = [pytest.mark.post_deploy, pytest.mark.functional, pytest.mark.checklist(ITEM)]


def _bad_lines(app_log: AppLog) -> tuple[int, list[str]]:
    """(lines read, problems): unparseable lines, and unterminated lines outside the live file."""
    total, problems = 0, []
    for path, number, raw, terminated in app_log.raw_lines():
        total += 1
        if not terminated and path != app_log.path:
            problems.append(f"{path.name}:{number} has no newline (a line split by rotation?)")
        elif terminated and parse_log_line(raw) is None:
            problems.append(f"{path.name}:{number} malformed: {raw[:120]!r}")
    return total, problems


def _logging_config(root: Path) -> dict[str, Any]:
    cfg = json.loads((root / "config" / "config.json").read_text(encoding="utf-8"))
    return dict(cfg.get("logging") or {})


def test_log_lines_are_well_formed(app_log: AppLog, etl_expect: Any) -> None:
    """Check log file management and rotation: every line of every log file parses."""
    total, problems = _bad_lines(app_log)
    etl_expect.that(total > 0, what=f"{app_log.path} has lines", expected="> 0 lines", got=total)
    etl_expect.that(
        not problems,
        what=f"log lines in {', '.join(p.name for p in app_log.files())}",
        expected="`[YYYY-MM-DD HH:MM:SS.mmm] [LEVEL] [Component] message | k=v` or JSON lines",
        got=f"{len(problems)} of {total} bad: " + "; ".join(problems[:5]),
    )


def test_rotation_settings_are_sane(
    app_log: AppLog, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """Check log file management and rotation: size limit, backups, files agree."""
    cfg = _logging_config(etl_deploy_root)
    size, backups = cfg.get("max_file_size"), cfg.get("max_backup_files")
    etl_expect.that(
        isinstance(size, int) and 64 * 1024 <= size <= 1024**3,
        what="logging.max_file_size",
        expected="an integer between 64 KiB and 1 GiB",
        got=size,
    )
    etl_expect.that(
        isinstance(backups, int) and 1 <= backups <= 100,
        what="logging.max_backup_files",
        expected="an integer in 1-100 (rotation keeps history)",
        got=backups,
    )
    rotated = [p for p in app_log.files() if p != app_log.path]
    numbers = sorted(int(p.name.rsplit(".", 1)[1]) for p in rotated)
    etl_expect.that(
        numbers == list(range(1, len(numbers) + 1)),
        what="rotated files are numbered .1 .. .n without gaps",
        expected="1..n",
        got=numbers,
    )
    assert isinstance(size, int)
    oversized = [
        f"{p.name} {p.stat().st_size} B" for p in app_log.files() if p.stat().st_size > size + 65536
    ]
    etl_expect.that(
        not oversized,
        what=f"log files within max_file_size {size} B (plus one line)",
        expected=f"<= {size} B",
        got=", ".join(oversized),
    )


@pytest.mark.destructive
def test_rotation_keeps_every_line_whole(
    app_log: AppLog, etl_api: Any, etl_config: Any, etl_deploy_root: Path, etl_expect: Any
) -> None:
    """Check log file management and rotation: 8 KiB limit: `.1` appears, lines whole."""
    etl_config.update({"logging": {"max_file_size": 8192}})
    ids = [uuid.uuid4().hex[:16] for _ in range(120)]

    def miss(cid: str) -> int:
        r = etl_api.get(f"/api/jobs/etlv_rotation_{cid}", headers={"X-Correlation-ID": cid})
        return int(r.status_code)

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(miss, ids))
    etl_expect.that(
        set(statuses) == {404},
        what="GET of unknown jobs (log traffic)",
        expected="404 each",
        got=sorted(set(statuses)),
    )
    rotated = wait_until(lambda: app_log.path.with_name(app_log.path.name + ".1").exists(), 5)
    etl_expect.that(
        rotated,
        what=f"{app_log.path.name}.1 after ~30 KiB of log lines with max_file_size 8192",
        expected="a rotated file",
        got=[p.name for p in app_log.files()],
    )

    def all_logged() -> bool:
        text = "\n".join(raw for _, _, raw, _ in app_log.raw_lines())
        return all(cid in text for cid in ids)

    wait_until(all_logged, 5)
    counts = dict.fromkeys(ids, 0)
    for line in app_log.lines():
        cid = line.correlation_id
        if cid in counts:
            counts[cid] += 1
    missing = [c for c, n in counts.items() if n == 0]
    doubled = [c for c, n in counts.items() if n > 1]
    total, problems = _bad_lines(app_log)
    keep = _logging_config(etl_deploy_root).get("max_backup_files", 5)
    etl_expect.that(
        not problems and not missing and not doubled,
        what=f"every line of {len(app_log.files())} log files (max_backup_files {keep})",
        expected="each of the 120 error lines present exactly once, every line whole",
        got=f"{len(missing)} missing (e.g. {missing[:3]}), {len(doubled)} duplicated, "
        f"{len(problems)} bad lines of {total}: " + "; ".join(problems[:3]),
    )
    sizes = {p.name: p.stat().st_size for p in app_log.files() if p != app_log.path}
    big = {n: s for n, s in sizes.items() if n.endswith(".1") and s > 8192 + 4096}
    etl_expect.that(
        not big,
        what="the newest rotation respects max_file_size",
        expected="<= 8192 B (+ one line)",
        got=big,
    )
