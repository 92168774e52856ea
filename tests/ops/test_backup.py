"""Backup and restore in-process: round trips, and every way a restore must refuse before writing."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from gateway.admin.totp import code_at, secret_from_base32
from gateway.admin.totp_store import TotpStore
from gateway.context.views import pseudonym
from gateway.policy.second_factor import SecondFactorPolicy
from gateway.stores.audit_log import AuditLog
from gateway.stores.backup import BackupError, create_backup, restore_backup
from gateway.stores.datadir import DataDir
from gateway.stores.serving_lock import hold, release
from gateway.stores.views_key import load_or_create_key
from pki.store import Registry, open_database
from tests.harness import INSECURE_KEYS, run_cli

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DataDir:
    root = tmp_path_factory.mktemp("bk") / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    run_cli("unit", "add", "TRK-B1", data=root, check=True)
    run_cli("quarantine", "TRK-B1", "--reason", "parked at the pound", data=root, check=True)
    return DataDir(root)


@pytest.fixture(scope="module")
def snapshot(data: DataDir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("snaps") / "snap"
    summary = create_backup(data, dest, NOW)
    assert summary.files >= 8 and summary.identities == 1 and summary.audit_head >= 3
    return dest


def facts(root: Path) -> tuple[list[tuple[str, str, dict[str, str]]], bool]:
    conn = open_database(root / "fleetgate.db")
    try:
        identities = [(r.id, r.state, r.metadata) for r in Registry(conn).list_identities()]
        return identities, AuditLog(conn).verify().ok
    finally:
        conn.close()


@pytest.mark.parametrize("archive", [False, True], ids=["directory", "tar.gz"])
def test_round_trip(data: DataDir, tmp_path: Path, archive: bool) -> None:
    dest = tmp_path / ("snap.tar.gz" if archive else "snap")
    create_backup(data, dest, NOW)
    if archive:
        assert dest.stat().st_mode & 0o077 == 0  # it holds the CA's keys
    result = restore_backup(dest, DataDir(tmp_path / "restored"), False, NOW)
    assert result["moved_aside"] is None
    assert facts(tmp_path / "restored") == facts(data.root)
    identities, _ = facts(tmp_path / "restored")
    assert (
        identities[0][1] == "quarantined" and identities[0][2]["quarantine_reason"] == "parked at the pound"
    )
    assert (tmp_path / "restored" / "ca" / "root.crt").read_bytes() == data.root_cert.read_bytes()


def test_a_backup_never_lands_on_something_that_exists(data: DataDir, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine")
    with pytest.raises(BackupError, match="choose a new destination"):
        create_backup(data, tmp_path / "busy", NOW)


def test_restore_moves_a_non_empty_dir_aside_only_with_force(snapshot: Path, tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(snapshot, DataDir(target), False, NOW)
    result = restore_backup(snapshot, DataDir(target), True, NOW)
    assert (Path(result["moved_aside"]) / "notes.txt").read_text() == "keep me"
    assert (target / "fleetgate.db").exists()


def test_restore_refuses_a_data_dir_a_gateway_is_serving(snapshot: Path, tmp_path: Path) -> None:
    target = tmp_path / "served"
    target.mkdir()
    lock = hold(target)
    try:
        with pytest.raises(BackupError, match="a gateway is serving"):
            restore_backup(snapshot, DataDir(target), True, NOW)
    finally:
        release(lock)
    restore_backup(snapshot, DataDir(target), True, NOW)  # once it stopped


def damage_edit(root: Path) -> None:
    path = root / "ca" / "root.crt"
    path.write_bytes(path.read_bytes().replace(b"A", b"B", 1))


def damage_missing(root: Path) -> None:
    (root / "crl" / "crl.der").unlink()


def damage_manifest(root: Path) -> None:
    (root / "manifest.json").write_text("{")


def damage_unlisted_db(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["fleetgate.db"]
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_edit, "ca/root.crt does not match its SHA-256"),
        (damage_missing, "crl/crl.der is listed in the manifest but missing"),
        (damage_manifest, "not a fleetgate backup"),
        (damage_unlisted_db, "not a fleetgate backup manifest"),
    ],
)
def test_a_damaged_backup_is_refused_before_anything_is_written(
    snapshot: Path, tmp_path: Path, damage: object, message: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(snapshot, copy)
    damage(copy)  # type: ignore[operator]
    with pytest.raises(BackupError, match=message):
        restore_backup(copy, DataDir(tmp_path / "out"), False, NOW)
    assert not (tmp_path / "out").exists()


def test_archives_that_are_cut_short_or_escape_are_refused(data: DataDir, tmp_path: Path) -> None:
    archive = tmp_path / "snap.tar.gz"
    create_backup(data, archive, NOW)
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(archive, DataDir(tmp_path / "out"), False, NOW)
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as out:
        info = tarfile.TarInfo("../escaped")
        info.size = 4
        out.addfile(info, io.BytesIO(b"boom"))
    with pytest.raises(BackupError, match="damaged"):
        restore_backup(evil, DataDir(tmp_path / "out"), False, NOW)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "out").exists()


def test_the_archive_is_private_from_its_first_byte(
    data: DataDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "snap.tar.gz"
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(b"left by an interrupted run")
    partial.chmod(0o644)
    seen: list[int] = []
    real_add = tarfile.TarFile.add

    def add(self: tarfile.TarFile, *args: object, **kwargs: object) -> None:
        seen.append(partial.stat().st_mode & 0o777)  # while the CA keys are being written into it
        real_add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile.TarFile, "add", add)
    create_backup(data, dest, NOW)
    assert seen and set(seen) == {0o600}


@pytest.mark.parametrize("archive", [False, True], ids=["directory", "tar.gz"])
def test_a_restore_keeps_operators_second_factor_and_partner_aliases(tmp_path: Path, archive: bool) -> None:
    """Security review finding 8: backups held neither DATA/totp nor DATA/views.key, so a restored
    gateway dropped every enrolled operator to certificate-only and changed every partner alias."""
    root = tmp_path / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    enrolled = run_cli(
        "operator", "add", "alice", "--role", "security", "--totp", "--json", data=root, check=True
    )
    secret = secret_from_base32(parse_qs(urlparse(enrolled.json()["totp_uri"]).query)["secret"][0])  # type: ignore[index]
    key = load_or_create_key(root)
    dest = tmp_path / ("snap.tar.gz" if archive else "snap")
    create_backup(DataDir(root), dest, NOW)
    restored = tmp_path / "restored"
    restore_backup(dest, DataDir(restored), False, NOW)

    assert (restored / "totp").stat().st_mode & 0o777 == 0o700
    assert (restored / "totp" / "alice.secret").stat().st_mode & 0o777 == 0o600
    assert (restored / "views.key").stat().st_mode & 0o777 == 0o600
    conn = open_database(restored / "fleetgate.db")
    try:
        record = Registry(conn).get_identity("operator", "alice")
    finally:
        conn.close()
    assert record is not None and record.metadata.get("totp") == "enrolled"
    store = TotpStore(restored, SecondFactorPolicy())
    assert store.enrolment("alice", marked=True) == "enrolled"
    assert store.verify("alice", code_at(secret, NOW.timestamp()), NOW.timestamp()).ok
    assert load_or_create_key(restored) == key  # the same key: the same aliases
    assert pseudonym(load_or_create_key(restored), 3, "TRK-1") == pseudonym(key, 3, "TRK-1")


def _rewrite_manifest(root: Path, drop: str | None = None) -> None:
    """Make the manifest match the files again after a test changed them (as a careful forger would)."""
    manifest = json.loads((root / "manifest.json").read_text())
    if drop is not None:
        del manifest["files"][drop]
    for name, entry in manifest["files"].items():
        entry["size"] = (root / name).stat().st_size
        entry["sha256"] = hashlib.sha256((root / name).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def test_a_restore_refuses_a_backup_whose_audit_log_was_edited(snapshot: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged"
    shutil.copytree(snapshot, forged)
    conn = sqlite3.connect(forged / "fleetgate.db")
    conn.executescript("DROP TRIGGER IF EXISTS audit_log_no_update;")
    conn.execute("UPDATE audit_log SET actor = 'operator/nobody' WHERE seq = 2")
    conn.commit()
    conn.close()
    _rewrite_manifest(forged)
    with pytest.raises(BackupError, match="the audit log in the backup is not intact"):
        restore_backup(forged, DataDir(tmp_path / "restored"), False, NOW)
    assert not (tmp_path / "restored").exists()  # nothing written


def test_a_restore_refuses_a_backup_that_lost_an_operators_second_factor(tmp_path: Path) -> None:
    root = tmp_path / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    run_cli("operator", "add", "alice", "--role", "security", "--totp", data=root, check=True)
    dest = tmp_path / "snap"
    create_backup(DataDir(root), dest, NOW)
    (dest / "totp" / "alice.secret").unlink()
    _rewrite_manifest(dest, drop="totp/alice.secret")
    with pytest.raises(BackupError) as refused:
        restore_backup(dest, DataDir(tmp_path / "restored"), False, NOW)
    assert str(refused.value) == (
        "operator alice has a second factor but the backup lacks its secret; use another backup"
    )
