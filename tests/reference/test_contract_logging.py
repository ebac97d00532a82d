"""Contract section 9 (logging): TEXT and JSON lines, size rotation, correlation ids of errors."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from contract_support import (
    TERMINAL,
    TEXT_LINE_RE,
    Api,
    LogReader,
    TargetFactory,
    assert_error,
    parse_iso,
    poll_until,
)

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.embedded import EmbeddedTarget

pytestmark = pytest.mark.timeout(90)

LEVELS = {"DEBUG", "INFO", "WARN", "ERROR", "FATAL"}
KV_RE = re.compile(r'[^\s=|]+=("(?:[^"\\]|\\.)*"|\S+)')


def _provoke_errors(api: Api) -> list[str]:
    """Several kinds of error answers; returns their correlation ids."""
    responses = [
        api.get("/api/jobs/log_missing_job"),
        api.get("/api/not-a-route"),
        api.request("DELETE", "/api/health"),
        api.post("/api/jobs", content=b"{bad json"),
        api.post("/api/jobs", json={"type": "EXTRACT"}),
    ]
    ids = []
    for r in responses:
        assert r.status_code >= 400
        ids.append(assert_error(r, r.status_code)["correlationId"])
    return ids


def _check_text_line(line: str) -> None:
    m = TEXT_LINE_RE.fullmatch(line)
    assert m, f"not a TEXT log line: {line!r}"
    parse_iso(m.group("ts"))
    rest = m.group("rest")
    if " | " in rest:
        pairs = rest.rsplit(" | ", 1)[1]
        assert KV_RE.match(pairs), f"context is not k=v pairs: {line!r}"


def _check_json_line(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise AssertionError(f"not a JSON log line: {line!r}") from exc
    assert isinstance(obj, dict), line
    assert set(obj) == {"timestamp", "level", "component", "message", "context"}, obj
    parse_iso(obj["timestamp"])
    assert obj["level"] in LEVELS, obj
    assert isinstance(obj["component"], str), obj
    assert obj["component"], obj
    assert isinstance(obj["message"], str), obj
    assert isinstance(obj["context"], dict), obj
    return obj


def _lines(path: Path) -> list[str]:
    data = path.read_bytes().decode("utf-8")
    assert data == "" or data.endswith("\n"), f"{path.name} ends inside a line"
    return data.splitlines()


def test_default_log_file_text_format(api: Api, reference: EmbeddedTarget) -> None:
    """§9: the default logs/etlplus.log holds TEXT lines `[ts] [LEVEL] [Component] msg | k=v`."""
    api.wait_status(api.create_job(), TERMINAL)
    _provoke_errors(api)
    path = reference.root / "logs" / "etlplus.log"
    poll_until(lambda: len(_lines(path)) >= 5, timeout=3, what="log lines")
    lines = _lines(path)
    for line in lines:
        _check_text_line(line)
    assert {TEXT_LINE_RE.fullmatch(ln).group("level") for ln in lines} >= {"INFO"}  # type: ignore[union-attr]


def test_error_correlation_ids_in_text_log(api: Api, reference: EmbeddedTarget) -> None:
    """§2/§9: every error answer is logged with correlationId=<id> (the body's id)."""
    ids = _provoke_errors(api)
    log = LogReader(reference)
    for cid in ids:
        line = log.wait_for(rf"correlationId={cid}\b", timeout=3, since_mark=False)
        _check_text_line(line)


def test_sent_correlation_id_in_log(api: Api, reference: EmbeddedTarget) -> None:
    """§1/§9: a correlation id the client sent is the one logged for its error."""
    cid = "c0ffee0012345678"
    r = api.get("/api/jobs/sent_cid_job", headers={"X-Correlation-ID": cid})
    assert_error(r, 404, "JOB_NOT_FOUND")
    LogReader(reference).wait_for(rf"correlationId={cid}\b", timeout=3, since_mark=False)


def test_json_format(make_target: TargetFactory) -> None:
    """§9: with format JSON every line is {timestamp, level, component, message, context}."""
    target = make_target({"logging": {"format": "JSON"}})
    with Api(target) as api:
        api.wait_status(api.create_job(), TERMINAL)
        ids = _provoke_errors(api)
        path = target.root / "logs" / "etlplus.log"

        def logged() -> set[str]:
            found = set()
            for line in _lines(path):
                ctx = _check_json_line(line)["context"]
                if isinstance(ctx.get("correlationId"), str):
                    found.add(ctx["correlationId"])
            return set(ids) <= found and found

        poll_until(logged, timeout=3, what="every error's correlationId in the JSON log")
        lines = _lines(path)
        assert len(lines) >= 5
        for line in lines:
            _check_json_line(line)


def _flood_errors(api: Api, n: int, tag: str) -> list[str]:
    """`n` error answers, each with its own sent correlation id (`tag` + counter, hex)."""
    ids = []
    for i in range(n):
        cid = f"{tag}{i:08x}"
        r = api.get(f"/api/jobs/rot_{i}", headers={"X-Correlation-ID": cid})
        assert r.status_code == 404
        ids.append(cid)
    return ids


def test_rotation_loses_and_splits_no_line(make_target: TargetFactory) -> None:
    """§9: size rotation: files stay under max_file_size; every line whole, in order, none lost."""
    max_size = 4096
    target = make_target({"logging": {"max_file_size": max_size, "max_backup_files": 500}})
    log = LogReader(target)
    with Api(target) as api:
        ids = _flood_errors(api, 300, "abc0")
        log.wait_for(rf"correlationId={ids[-1]}\b", timeout=5, since_mark=False)
    backups = log.backups()
    assert len(backups) >= 5, f"only {len(backups)} rotated files for 300 error lines"
    assert not log.path.with_name(f"etlplus.log.{len(backups) + 1}").exists()
    order: list[str] = []
    total_lines = 0
    for path in log.all_files_oldest_first():
        size = path.stat().st_size
        assert size <= max_size, f"{path.name} is {size} bytes > max_file_size {max_size}"
        for line in _lines(path):
            _check_text_line(line)
            total_lines += 1
            m = re.search(r"correlationId=(abc0[0-9a-f]{8})\b", line)
            if m:
                order.append(m.group(1))
    counts = {cid: order.count(cid) for cid in ids}
    missing = [cid for cid, c in counts.items() if c == 0]
    assert not missing, f"{len(missing)} error lines lost, e.g. {missing[:3]}"
    assert len(set(counts.values())) == 1, f"uneven line counts per error: {counts}"
    first_seen = list(dict.fromkeys(order))
    assert first_seen == ids, "lines out of order across the rotated files"
    assert total_lines >= len(ids)


def test_rotation_keeps_max_backup_files(make_target: TargetFactory) -> None:
    """§9: backups beyond max_backup_files are removed; the newest lines are kept."""
    target = make_target({"logging": {"max_file_size": 2048, "max_backup_files": 3}})
    log = LogReader(target)
    with Api(target) as api:
        ids = _flood_errors(api, 150, "bcd0")
        log.wait_for(rf"correlationId={ids[-1]}\b", timeout=5, since_mark=False)
    names = sorted(p.name for p in log.path.parent.glob("etlplus.log*"))
    assert names == ["etlplus.log", "etlplus.log.1", "etlplus.log.2", "etlplus.log.3"], names
    text = "".join(p.read_text(encoding="utf-8") for p in log.all_files_oldest_first())
    assert f"correlationId={ids[0]}" not in text, "the oldest lines should have been rotated out"
    for path in log.all_files_oldest_first():
        assert path.stat().st_size <= 2048, path
        for line in _lines(path):
            _check_text_line(line)
    kept = re.findall(r"correlationId=(bcd0[0-9a-f]{8})\b", text)
    first_kept = ids.index(kept[0])
    assert list(dict.fromkeys(kept)) == ids[first_kept:], "a line lost among the kept files"
