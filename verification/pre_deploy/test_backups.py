"""Pre-deployment 1. Environment Setup: backups of database, configuration and binary, verified.

The backup is made with the deployment's own `rollback.sh backup`; its MANIFEST.sha256 (sha256sum
format) is checked here independently, in Python, against the files in the backup folder.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from etlverify.client import Expect

    from .support import Backup

pytestmark = [pytest.mark.pre_deploy, pytest.mark.functional]

_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(backup: Backup, expect: Expect) -> dict[str, str]:
    manifest = backup.path / "MANIFEST.sha256"
    expect.that(
        manifest.is_file(), "backup has a checksum manifest", expected=str(manifest), got="missing"
    )
    entries: dict[str, str] = {}
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line)
        expect.that(
            match is not None,
            f"MANIFEST.sha256 line {n} is in sha256sum format",
            expected="<64 hex>  <relative path>",
            got=line[:120],
        )
        assert match is not None
        entries[match.group(2)] = match.group(1)
    return entries


def _backed_up(backup: Backup, expect: Expect, rel: str) -> Path:
    copy = backup.path / rel
    entries = _manifest(backup, expect)
    expect.that(copy.is_file(), f"backup contains {rel}", expected=str(copy), got="missing")
    expect.that(
        rel in entries,
        f"MANIFEST.sha256 lists {rel}",
        expected=rel,
        got=", ".join(sorted(entries)) or "no entries",
    )
    return copy


@pytest.mark.checklist("pre.1_environment_setup.backup_production_database")
def test_backup_contains_the_database(fresh_backup: Backup, etl_expect: Expect) -> None:
    """The backup holds a copy of the database (a non-empty SQLite file)."""
    db = _backed_up(fresh_backup, etl_expect, "data/etlplus.db")
    head = db.read_bytes()[:16]
    etl_expect.that(
        head.startswith(b"SQLite format 3"),
        "backed-up database is a SQLite file",
        expected="SQLite format 3 header",
        got=repr(head),
    )


@pytest.mark.checklist("pre.1_environment_setup.backup_configuration_files")
@pytest.mark.parametrize("rel", ["config/config.json", "config/feature_flags.json"])
def test_backup_contains_the_configuration(
    fresh_backup: Backup, etl_deploy_root: Path, etl_expect: Expect, rel: str
) -> None:
    """config.json and feature_flags.json are in the backup, identical to the deployed files."""
    copy = _backed_up(fresh_backup, etl_expect, rel)
    etl_expect.that(
        _sha256(copy) == _sha256(etl_deploy_root / rel),
        f"backed-up {rel} equals the deployed file",
        expected=_sha256(etl_deploy_root / rel),
        got=_sha256(copy),
    )


@pytest.mark.checklist("pre.1_environment_setup.backup_binary")
def test_backup_contains_the_binary(
    fresh_backup: Backup, etl_deploy_root: Path, etl_expect: Expect
) -> None:
    """The server binary is in the backup, byte-identical to the deployed one."""
    copy = _backed_up(fresh_backup, etl_expect, "bin/etlplus")
    etl_expect.that(
        _sha256(copy) == _sha256(etl_deploy_root / "bin" / "etlplus"),
        "backed-up binary equals the deployed binary",
    )


@pytest.mark.checklist("pre.1_environment_setup.backup_integrity")
def test_backup_manifest_verifies(fresh_backup: Backup, etl_expect: Expect) -> None:
    """Every file in the manifest hashes to its listed sha256, and every file is listed."""
    entries = _manifest(fresh_backup, etl_expect)
    etl_expect.that(
        bool(entries), "MANIFEST.sha256 has entries", expected="at least one", got="none"
    )
    mismatched = [
        rel
        for rel, digest in entries.items()
        if not (fresh_backup.path / rel).is_file() or _sha256(fresh_backup.path / rel) != digest
    ]
    etl_expect.that(
        not mismatched,
        "backup files match MANIFEST.sha256",
        expected="all checksums equal",
        got=f"mismatch or missing: {mismatched}",
    )
    on_disk = {
        p.relative_to(fresh_backup.path).as_posix()
        for p in fresh_backup.path.rglob("*")
        if p.is_file() and p.name != "MANIFEST.sha256"
    }
    unlisted = sorted(on_disk - set(entries))
    etl_expect.that(
        not unlisted,
        "every backed-up file is in MANIFEST.sha256",
        expected="no unlisted files",
        got=unlisted,
    )
