"""`fleetgate backup` / `fleetgate restore`: a consistent snapshot of a data dir, verified on restore.

What a backup holds (a directory, or the same as a .tar.gz):
    fleetgate.db     the SQLite database, copied with SQLite's online backup API: one consistent
                     snapshot (registry, audit chain, retained messages, sessions) taken while the
                     gateway keeps serving (WAL: the reader does not block its writes)
    ca/ server/ crl/ the CA (keys included, encrypted if the CA has a passphrase), the gateway's
                     certificate and key, the current CRL
    totp/            operators' TOTP secrets and verifier state: without them a restored gateway would
                     refuse every enrolled operator's sensitive actions (the registry says enrolled)
    views.key        the partner-view pseudonymisation key: without it every partner alias would change
    manifest.json    format, time, and the SHA-256 and size of every file above

Restore verifies every checksum and the database's integrity before it writes anything, refuses a
data dir a gateway is serving (gateway.lock), and refuses a non-empty one without force — then the
old contents are moved aside (DATA.replaced-<time>), never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from gateway.stores.audit_log import AuditLog
from gateway.stores.datadir import DataDir
from gateway.stores.serving_lock import is_served

FORMAT = 1
MANIFEST = "manifest.json"
DATABASE = "fleetgate.db"
TREES = ("ca", "server", "crl", "totp")
FILES = ("views.key",)  # single files at the top of the data dir, when they exist


class BackupError(Exception):
    """A backup or restore refused; the message says why and what to do."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    files: int
    bytes: int
    created_at: str
    audit_head: int
    identities: int

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot_database(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=10)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # all pages in one step: one read transaction, one consistent snapshot
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file; restore turns WAL on again
    finally:
        dst.close()
        src.close()
    os.chmod(target, 0o600)


def _database_facts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        check = conn.execute("PRAGMA quick_check").fetchone()
        if check is None or check[0] != "ok":
            raise BackupError(
                f"the database {path.name} fails SQLite's integrity check ({check and check[0]})"
            )
        head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
        identities = conn.execute("SELECT count(*) FROM pki_identities").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"the database {path.name} cannot be read ({exc}); the backup is damaged") from None
    finally:
        conn.close()
    return {"audit_head": int(head[0]) if head else 0, "identities": int(identities[0])}


def _files(root: Path) -> Iterator[Path]:
    yield root / DATABASE
    for name in FILES:
        if (root / name).is_file():
            yield root / name
    for tree in TREES:
        if (root / tree).is_dir():
            yield from sorted(p for p in (root / tree).rglob("*") if p.is_file())


def create_backup(data: DataDir, dest: Path, now: datetime) -> BackupSummary:
    if not data.is_initialised():
        raise BackupError(f"{data.root} is not a fleetgate data directory; check --data")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} already exists and is not an empty directory; choose a new destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fleetgate-backup-", dir=dest.parent) as tmp:
        stage = Path(tmp) / "backup"
        stage.mkdir(mode=0o700)
        _snapshot_database(data.database, stage / DATABASE)
        facts = _database_facts(stage / DATABASE)
        for tree in TREES:
            if (data.root / tree).is_dir():
                shutil.copytree(data.root / tree, stage / tree, copy_function=shutil.copy2)
        for name in FILES:
            if (data.root / name).is_file():
                shutil.copy2(data.root / name, stage / name)  # keeps its 0600
        created_at = now.isoformat()
        files: dict[str, dict[str, Any]] = {
            str(p.relative_to(stage)): {"sha256": _sha256(p), "size": p.stat().st_size} for p in _files(stage)
        }
        manifest = {
            "format": FORMAT,
            "created_at": created_at,
            "source": str(data.root),
            **facts,
            "files": files,
        }
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if is_archive(dest):
            partial = dest.with_name(dest.name + ".partial")
            # It holds the CA's keys: private from its first byte (created 0600, whatever the umask).
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # an existing .partial from an interrupted run keeps its mode otherwise
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as archive:
                archive.add(stage, arcname=".")
            partial.replace(dest)
        else:
            if dest.exists():
                dest.rmdir()
            stage.replace(dest)
    size = sum(int(f["size"]) for f in files.values())
    return BackupSummary(dest, len(files), size, created_at, facts["audit_head"], facts["identities"])


@contextmanager
def _opened(src: Path) -> Iterator[Path]:
    """The backup as a directory (an archive is unpacked into a private temporary one)."""
    if src.is_dir():
        yield src
        return
    if not src.is_file():
        raise BackupError(
            f"there is no backup at {src}; give the directory or .tar.gz `fleetgate backup` wrote"
        )
    with tempfile.TemporaryDirectory(prefix=".fleetgate-restore-") as tmp:
        try:
            with tarfile.open(src, "r:*") as archive:
                archive.extractall(tmp, filter="data")  # refuses links, devices and paths outside tmp
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(
                f"{src} is not a readable backup archive ({exc}); the file is damaged"
            ) from None
        yield Path(tmp)


def verify_backup(root: Path) -> dict[str, Any]:
    """The manifest, once every file it lists has its size and SHA-256 and the database is sound."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files: dict[str, dict[str, Any]] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BackupError(f"{root} has no readable {MANIFEST}; it is not a fleetgate backup") from None
    if manifest.get("format") != FORMAT or DATABASE not in files or "ca/root.crt" not in files:
        raise BackupError(f"{root}/{MANIFEST} is not a fleetgate backup manifest of format {FORMAT}")
    for name, expected in sorted(files.items()):
        path = root / name
        if ".." in Path(name).parts or not path.is_file():
            raise BackupError(
                f"{name} is listed in the manifest but missing from the backup; it is incomplete"
            )
        if path.stat().st_size != expected.get("size") or _sha256(path) != expected.get("sha256"):
            raise BackupError(
                f"{name} does not match its SHA-256 in the manifest; the backup is damaged, use another one"
            )
    _database_facts(root / DATABASE)
    _check_audit_chain(root / DATABASE)
    _check_ca(root)
    _check_second_factors(root)
    return dict(manifest)


def _check_audit_chain(database: Path) -> None:
    """The audit log in the backup is an intact hash chain (a restore must not start from a log
    that was edited)."""
    with tempfile.TemporaryDirectory(prefix=".fleetgate-verify-") as tmp:
        copy = Path(tmp) / DATABASE  # opening an AuditLog may migrate: never on the backup itself
        shutil.copy2(database, copy)
        conn = sqlite3.connect(copy)
        try:
            result = AuditLog(conn).verify()
        finally:
            conn.close()
    if not result.ok:
        raise BackupError(f"the audit log in the backup is not intact ({result.problem}); use another backup")


def _check_ca(root: Path) -> None:
    """Every issuing CA certificate in the backup is signed by its root."""
    try:
        ca_root = x509.load_pem_x509_certificate((root / "ca" / "root.crt").read_bytes())
        issuing = [
            x509.load_pem_x509_certificate(p.read_bytes()) for p in sorted((root / "ca").glob("issuing*.crt"))
        ]
    except (OSError, ValueError) as exc:
        raise BackupError(
            f"the CA certificates in the backup cannot be read ({exc}); use another backup"
        ) from None
    for cert in issuing:
        try:
            cert.verify_directly_issued_by(ca_root)
        except (ValueError, TypeError, InvalidSignature):
            raise BackupError(
                f"the issuing CA {cert.subject.rfc4514_string()} in the backup is not signed by its root; "
                "use another backup"
            ) from None
    if not issuing:
        raise BackupError("the backup holds no issuing CA certificate; it is incomplete")


def _check_second_factors(root: Path) -> None:
    """Every operator the registry says is enrolled has its TOTP secret in the backup: a restore must
    not turn anyone's second factor off."""
    conn = sqlite3.connect(f"file:{root / DATABASE}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, metadata FROM pki_identities WHERE kind = 'operator'").fetchall()
    finally:
        conn.close()
    for ident, metadata in rows:
        enrolled = json.loads(metadata or "{}").get("totp") == "enrolled"
        if enrolled and not (root / "totp" / f"{ident}.secret").is_file():
            raise BackupError(
                f"operator {ident} has a second factor but the backup lacks its secret; use another backup"
            )


def restore_backup(src: Path, data: DataDir, force: bool, now: datetime) -> dict[str, Any]:
    """Verify the backup, then put it in place as `data`; returns what was restored."""
    with _opened(src) as root:
        manifest = verify_backup(root)
        target = data.root
        occupied = target.exists() and any(p.name != "gateway.lock" for p in target.iterdir())
        if target.exists() and is_served(target):
            raise BackupError(f"a gateway is serving {target}; stop it before restoring into it")
        if occupied and not force:
            raise BackupError(
                f"{target} is not empty; restore into a new directory, or add --force to move it aside first"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
        for name in manifest["files"]:
            destination = stage / name
            destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(root / name, destination)
        aside = None
        if target.exists():
            aside = target.with_name(f"{target.name}.replaced-{now.strftime('%Y%m%dT%H%M%S')}")
            target.replace(aside)
        stage.replace(target)
        os.chmod(target, 0o700)
    return {
        "restored": str(target),
        "from": str(src),
        "created_at": manifest["created_at"],
        "files": len(manifest["files"]),
        "audit_head": manifest.get("audit_head"),
        "identities": manifest.get("identities"),
        "moved_aside": str(aside) if aside else None,
    }
