"""The CA's registry in SQLite: identities, enrollment tokens, issued certificates, CRL numbers.

Tables are prefixed ``pki_`` because the gateway's own stores share the database file. Rows are
converted to records in pki/records.py.

Certificates are history, not state: removing an identity keeps its certificate rows, because a
revoked serial must stay on the CRL until it expires whether or not its owner still exists.

Every public method is atomic and committed before it returns. ``Registry.transaction()`` groups
several calls into one atomic change (the methods join an open transaction). A lock serialises use
of the shared connection across threads, since an sqlite3 connection has one transaction at a time.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pki.authority import RevokedEntry
from pki.enrollment import TokenRecord
from pki.errors import AlreadyExistsError, NotFoundError, PkiError, StoreError
from pki.names import CLIENT_KINDS, Identity, validate_id
from pki.records import (
    CERT_COLUMNS,
    IDENTITY_COLUMNS,
    IDENTITY_STATES,
    TOKEN_COLUMNS,
    CertificateRecord,
    IdentityRecord,
    certificate_from_row,
    from_text,
    identity_from_row,
    serial_text,
    to_text,
    token_from_row,
)
from pki.sqlite import apply_migrations, open_database, transaction

__all__ = [
    "IDENTITY_STATES",
    "CertificateRecord",
    "IdentityRecord",
    "Registry",
    "apply_migrations",
    "open_database",
    "transaction",
]

COMPONENT = "pki"

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pki_identities (
        kind TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, metadata TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (kind, id));
    CREATE TABLE pki_tokens (
        token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, unit_id TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT,
        FOREIGN KEY (kind, unit_id) REFERENCES pki_identities (kind, id) ON DELETE CASCADE);
    CREATE INDEX pki_tokens_by_identity ON pki_tokens (kind, unit_id);
    CREATE TABLE pki_certificates (
        serial TEXT PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL,
        not_before TEXT NOT NULL, not_after TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
        fingerprint TEXT NOT NULL UNIQUE, pem TEXT NOT NULL, recorded_at TEXT NOT NULL,
        revoked_at TEXT, revocation_reason TEXT);
    CREATE INDEX pki_certificates_by_identity ON pki_certificates (kind, id);
    CREATE INDEX pki_certificates_by_status ON pki_certificates (status);
    CREATE TABLE pki_crl_state (id INTEGER PRIMARY KEY CHECK (id = 1), last_number INTEGER NOT NULL);
    """,
    # 2: change feeds, so a running gateway can follow what the CLI (another process) changes.
    """
    CREATE INDEX pki_identities_by_update ON pki_identities (updated_at);
    CREATE INDEX pki_certificates_by_revocation ON pki_certificates (revoked_at);
    """,
    # 3: a feed of issued certificates, so the gateway admits only certificates the registry knows.
    """
    CREATE INDEX pki_certificates_by_record ON pki_certificates (recorded_at);
    """,
    # 4: renewal lineage, so revoking a certificate can reach every certificate renewed from it.
    # Certificates renewed before this step have no recorded predecessor (NULL): they start a lineage.
    """
    ALTER TABLE pki_certificates ADD COLUMN renewed_from TEXT;
    CREATE INDEX pki_certificates_by_predecessor ON pki_certificates (renewed_from);
    """,
    # 5: which issuing CA signed each certificate (its generation, pki/authority.py), so every issuing
    # CA's CRL lists what it issued and an older one can be retired once nothing in use came from it.
    # Before this step there was only ever issuing CA 1.
    """
    ALTER TABLE pki_certificates ADD COLUMN issuing_ca INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX pki_certificates_by_issuing_ca ON pki_certificates (issuing_ca, status, not_after);
    """,
    # 6: the feeds a running gateway reads every second ("valid and recorded since", "revoked since")
    # by status and time together. Without statistics SQLite chose the status index for both and
    # read every valid certificate each second (11,000 rows, ~12 ms a second at 10,000 units).
    """
    CREATE INDEX pki_certificates_by_status_record ON pki_certificates (status, recorded_at);
    CREATE INDEX pki_certificates_by_status_revocation ON pki_certificates (status, revoked_at);
    """,
)

# PostgreSQL (pki/postgres.py): the shape the SQLite steps above end at, in one step. `rowid` is a
# column here (SQLite has it built in): the order certificates were recorded in. Every change to an
# identity or a certificate notifies the registry channel (in the writer's transaction, so delivered
# at its commit), which is how every node's follower hears of it at once (gateway/app/cluster.py).
POSTGRES_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE pki_identities (
        kind TEXT NOT NULL, id TEXT NOT NULL, state TEXT NOT NULL, metadata TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (kind, id));
    CREATE INDEX pki_identities_by_update ON pki_identities (updated_at);
    CREATE TABLE pki_tokens (
        token_hash TEXT PRIMARY KEY, kind TEXT NOT NULL, unit_id TEXT NOT NULL,
        created_at TEXT NOT NULL, expires_at TEXT NOT NULL, used_at TEXT,
        FOREIGN KEY (kind, unit_id) REFERENCES pki_identities (kind, id) ON DELETE CASCADE);
    CREATE INDEX pki_tokens_by_identity ON pki_tokens (kind, unit_id);
    CREATE TABLE pki_certificates (
        rowid BIGSERIAL UNIQUE,
        serial TEXT PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL,
        not_before TEXT NOT NULL, not_after TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('valid', 'revoked')),
        fingerprint TEXT NOT NULL UNIQUE, pem TEXT NOT NULL, recorded_at TEXT NOT NULL,
        revoked_at TEXT, revocation_reason TEXT, renewed_from TEXT,
        issuing_ca BIGINT NOT NULL DEFAULT 1);
    CREATE INDEX pki_certificates_by_identity ON pki_certificates (kind, id);
    CREATE INDEX pki_certificates_by_status ON pki_certificates (status);
    CREATE INDEX pki_certificates_by_revocation ON pki_certificates (revoked_at);
    CREATE INDEX pki_certificates_by_record ON pki_certificates (recorded_at);
    CREATE INDEX pki_certificates_by_predecessor ON pki_certificates (renewed_from);
    CREATE INDEX pki_certificates_by_issuing_ca ON pki_certificates (issuing_ca, status, not_after);
    CREATE TABLE pki_crl_state (id INTEGER PRIMARY KEY CHECK (id = 1), last_number BIGINT NOT NULL);
    CREATE FUNCTION pki_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('fleetgate_registry', TG_TABLE_NAME); RETURN NULL; END $$;
    CREATE TRIGGER pki_identities_notify AFTER INSERT OR UPDATE OR DELETE ON pki_identities
        FOR EACH STATEMENT EXECUTE FUNCTION pki_notify_change();
    CREATE TRIGGER pki_certificates_notify AFTER INSERT OR UPDATE ON pki_certificates
        FOR EACH STATEMENT EXECUTE FUNCTION pki_notify_change();
    """,
)

# A certificate is *in use* while it is valid, unexpired, and the newest valid certificate of its
# identity: one renewed into a newer one (or re-issued by an operator) has been replaced, whichever
# issuing CA signed the newer one.
_IN_USE = (
    "c.status = 'valid' AND c.not_after >= ? AND NOT EXISTS (SELECT 1 FROM pki_certificates n "
    "WHERE n.kind = c.kind AND n.id = c.id AND n.status = 'valid' AND n.rowid > c.rowid)"
)


def _check_metadata(metadata: dict[str, str] | None) -> str:
    metadata = metadata or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise PkiError("invalid_metadata", "identity metadata must map strings to strings")
    return json.dumps(metadata, sort_keys=True)


def _check_state(state: str) -> None:
    if state not in IDENTITY_STATES:
        raise PkiError("invalid_state", f"state {state!r} is not one of {', '.join(IDENTITY_STATES)}")


class Registry:
    """Identities, tokens, certificates and CRL numbers of one CA (component ``pki``)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.RLock()
        with self._lock:
            self.schema_version = apply_migrations(conn, COMPONENT, MIGRATIONS, POSTGRES_MIGRATIONS)

    @classmethod
    def open(cls, path: Path, *, synchronous: str = "NORMAL") -> Registry:
        return cls(open_database(path, synchronous=synchronous))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group several registry calls into one atomic change (they join it)."""
        with self._lock, transaction(self.conn) as conn:
            yield conn

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self.conn.execute(sql, params).fetchall())

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    # --------------------------------------------------------------------------------- identities

    def add_identity(
        self,
        kind: str,
        ident: str,
        now: datetime,
        metadata: dict[str, str] | None = None,
        *,
        state: str = "registered",
    ) -> IdentityRecord:
        validate_id(kind, ident)
        _check_state(state)
        stamp = to_text(now)
        try:
            with self.transaction() as conn:
                self._refuse_id_of_another_kind(kind, ident)
                conn.execute(
                    f"INSERT INTO pki_identities ({IDENTITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, ident, state, _check_metadata(metadata), stamp, stamp),
                )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(
                "already_exists", f"{kind} {ident} already exists; pick another id"
            ) from None
        return self._require_identity(kind, ident)

    def _refuse_id_of_another_kind(self, kind: str, ident: str) -> None:
        """Client ids are unique across the kinds that connect to the broker.

        An MQTT client id is a bare id (a unit's must equal its unit id), so a partner, operator or
        service sharing a unit's id could present that unit's client id: the broker refuses such a
        CONNECT, but the registry is where the ambiguity is stopped. Checked inside the insert's
        transaction (BEGIN IMMEDIATE), so two concurrent adds cannot both pass it.
        """
        if kind not in CLIENT_KINDS:
            return
        others = [k for k in CLIENT_KINDS if k != kind]
        marks = ", ".join("?" for _ in others)
        rows = self._query(
            f"SELECT kind FROM pki_identities WHERE id = ? AND kind IN ({marks}) ORDER BY kind",
            (ident, *others),
        )
        if rows:
            holder = rows[0][0]
            raise AlreadyExistsError(
                "id_taken",
                f"{holder} {ident} already holds the id {ident}, and units, operators, services and "
                f"partners share one id space; pick another id for the {kind}",
            )

    def get_identity(self, kind: str, ident: str) -> IdentityRecord | None:
        rows = self._query(
            f"SELECT {IDENTITY_COLUMNS} FROM pki_identities WHERE kind = ? AND id = ?", (kind, ident)
        )
        return identity_from_row(rows[0]) if rows else None

    def _require_identity(self, kind: str, ident: str) -> IdentityRecord:
        record = self.get_identity(kind, ident)
        if record is None:
            raise NotFoundError("unknown_identity", f"there is no {kind} {ident}; check the id")
        return record

    def count_by_state(self, kind: str) -> dict[str, int]:
        """How many identities of this kind are in each state (for a gauge: one indexed scan)."""
        rows = self._query(
            "SELECT state, COUNT(*) FROM pki_identities WHERE kind = ? GROUP BY state", (kind,)
        )
        return {str(state): int(count) for state, count in rows}

    def list_identities(self, kind: str | None = None) -> list[IdentityRecord]:
        sql = f"SELECT {IDENTITY_COLUMNS} FROM pki_identities"
        rows = (
            self._query(sql + " ORDER BY kind, id")
            if kind is None
            else self._query(sql + " WHERE kind = ? ORDER BY id", (kind,))
        )
        return [identity_from_row(row) for row in rows]

    def set_state(self, kind: str, ident: str, state: str, now: datetime) -> IdentityRecord:
        _check_state(state)
        changed = self._write(
            "UPDATE pki_identities SET state = ?, updated_at = ? WHERE kind = ? AND id = ?",
            (state, to_text(now), kind, ident),
        )
        if not changed:
            self._require_identity(kind, ident)
        return self._require_identity(kind, ident)

    def update_metadata(
        self, kind: str, ident: str, metadata: dict[str, str], now: datetime
    ) -> IdentityRecord:
        """Replace the identity's metadata (callers merge first). Joins an open transaction, so a
        state change and the facts that explain it (e.g. why it was quarantined) commit together."""
        text = _check_metadata(metadata)
        changed = self._write(
            "UPDATE pki_identities SET metadata = ?, updated_at = ? WHERE kind = ? AND id = ?",
            (text, to_text(now), kind, ident),
        )
        if not changed:
            self._require_identity(kind, ident)
        return self._require_identity(kind, ident)

    def remove_identity(
        self, kind: str, ident: str, *, force: bool = False, now: datetime | None = None
    ) -> None:
        """Delete the identity and its tokens; its certificate history stays (see module doc).

        Refused while it holds valid certificates (expired ones do not count when ``now`` is given)
        unless ``force``: removal alone does not revoke anything.
        """
        with self.transaction():
            self._require_identity(kind, ident)
            active = [c for c in self.list_certificates(kind, ident) if c.status == "valid"]
            if now is not None:
                active = [c for c in active if c.not_after >= now]
            if active and not force:
                raise StoreError(
                    "has_active_certificates",
                    f"{kind} {ident} still has {len(active)} valid certificate(s); "
                    "revoke them first or force removal",
                )
            self.conn.execute("DELETE FROM pki_identities WHERE kind = ? AND id = ?", (kind, ident))

    # ------------------------------------------------------------------------------------- tokens

    def add_token(self, record: TokenRecord) -> None:
        params = (
            record.token_hash,
            record.kind,
            record.unit_id,
            to_text(record.created_at),
            to_text(record.expires_at),
            None if record.used_at is None else to_text(record.used_at),
        )
        try:
            self._write(f"INSERT INTO pki_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", params)
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc):
                raise NotFoundError(
                    "unknown_identity", f"there is no {record.kind} {record.unit_id} to issue a token for"
                ) from None
            raise AlreadyExistsError(
                "already_exists", "this token already exists; generate a new one"
            ) from None

    def get_token(self, token_hash: str) -> TokenRecord | None:
        rows = self._query(f"SELECT {TOKEN_COLUMNS} FROM pki_tokens WHERE token_hash = ?", (token_hash,))
        return token_from_row(rows[0]) if rows else None

    def pending_tokens(self, kind: str, ident: str, now: datetime) -> list[TokenRecord]:
        rows = self._query(
            f"SELECT {TOKEN_COLUMNS} FROM pki_tokens WHERE kind = ? AND unit_id = ? AND used_at IS NULL "
            "AND expires_at > ? ORDER BY created_at",
            (kind, ident, to_text(now)),
        )
        return [token_from_row(row) for row in rows]

    def consume_token(self, token_hash: str, now: datetime) -> bool:
        """Mark the token used; True only for the one call that did it (one UPDATE, no read first)."""
        changed = self._write(
            "UPDATE pki_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
            (to_text(now), token_hash),
        )
        return changed == 1

    def revoke_tokens(self, kind: str, ident: str, now: datetime) -> int:
        """Expire the identity's pending tokens as of ``now`` (kept, so a late use reads "expired")."""
        stamp = to_text(now)
        return self._write(
            "UPDATE pki_tokens SET expires_at = ? WHERE kind = ? AND unit_id = ? AND used_at IS NULL "
            "AND expires_at > ?",
            (stamp, kind, ident, stamp),
        )

    # ------------------------------------------------------------------------------- certificates

    def add_certificate(
        self,
        cert: x509.Certificate,
        identity: Identity,
        now: datetime,
        *,
        renewed_from: int | None = None,
        issuing_ca: int = 1,
    ) -> CertificateRecord:
        """Record an issued certificate; `renewed_from` is the serial its holder renewed (EST),
        `issuing_ca` the generation of the issuing CA that signed it."""
        params = (
            serial_text(cert.serial_number),
            identity.kind,
            identity.id,
            to_text(cert.not_valid_before_utc),
            to_text(cert.not_valid_after_utc),
            "valid",
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.public_bytes(Encoding.PEM).decode(),
            to_text(now),
            None if renewed_from is None else serial_text(renewed_from),
            issuing_ca,
        )
        try:
            self._write(
                "INSERT INTO pki_certificates (serial, kind, id, not_before, not_after, status, fingerprint, "
                "pem, recorded_at, renewed_from, issuing_ca) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params,
            )
        except sqlite3.IntegrityError:
            raise AlreadyExistsError(
                "already_exists", f"certificate {cert.serial_number:x} is already recorded"
            ) from None
        record = self.get_certificate(cert.serial_number)
        assert record is not None
        return record

    def get_certificate(self, serial: int) -> CertificateRecord | None:
        rows = self._query(
            f"SELECT {CERT_COLUMNS} FROM pki_certificates WHERE serial = ?", (serial_text(serial),)
        )
        return certificate_from_row(rows[0]) if rows else None

    def list_certificates(self, kind: str | None = None, ident: str | None = None) -> list[CertificateRecord]:
        clauses, params = [], []
        for column, value in (("kind", kind), ("id", ident)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            f"SELECT {CERT_COLUMNS} FROM pki_certificates{where} ORDER BY not_before, rowid", tuple(params)
        )
        return [certificate_from_row(row) for row in rows]

    def latest_certificate(self, kind: str, ident: str) -> CertificateRecord | None:
        rows = self._query(
            f"SELECT {CERT_COLUMNS} FROM pki_certificates WHERE kind = ? AND id = ? "
            "ORDER BY not_before DESC, rowid DESC LIMIT 1",
            (kind, ident),
        )
        return certificate_from_row(rows[0]) if rows else None

    def renewals_of(self, serial: int) -> list[CertificateRecord]:
        """The certificates renewed directly from this one (two or more: it was renewed twice)."""
        rows = self._query(
            f"SELECT {CERT_COLUMNS} FROM pki_certificates WHERE renewed_from = ? ORDER BY not_before, rowid",
            (serial_text(serial),),
        )
        return [certificate_from_row(row) for row in rows]

    def descendants(self, serial: int) -> list[int]:
        """Every certificate renewed from this one, directly or through other renewals."""
        rows = self._query(
            "WITH RECURSIVE down(serial) AS ("
            " SELECT serial FROM pki_certificates WHERE renewed_from = ?"
            " UNION SELECT c.serial FROM pki_certificates c JOIN down ON c.renewed_from = down.serial"
            ") SELECT serial FROM down",
            (serial_text(serial),),
        )
        return [int(text, 16) for (text,) in rows]

    def ancestors(self, serial: int) -> list[CertificateRecord]:
        """The certificates this one was renewed from, the first one issued first (itself excluded)."""
        chain: list[CertificateRecord] = []
        seen = {serial}
        with self._lock:
            record = self.get_certificate(serial)
            while record is not None and record.renewed_from is not None and record.renewed_from not in seen:
                seen.add(record.renewed_from)
                record = self.get_certificate(record.renewed_from)
                if record is not None:
                    chain.append(record)
        return chain[::-1]

    def revoke_certificate(self, serial: int, reason: x509.ReasonFlags, now: datetime) -> bool:
        """True if this call revoked it; False if it is unknown or already revoked."""
        changed = self._write(
            "UPDATE pki_certificates SET status = 'revoked', revoked_at = ?, revocation_reason = ? "
            "WHERE serial = ? AND status = 'valid'",
            (to_text(now), reason.value, serial_text(serial)),
        )
        return changed == 1

    def is_revoked(self, serial: int) -> bool:
        rows = self._query("SELECT status FROM pki_certificates WHERE serial = ?", (serial_text(serial),))
        return bool(rows) and rows[0][0] == "revoked"

    def revoked_entries(
        self, now: datetime | None = None, *, issuing_ca: int | None = None
    ) -> list[RevokedEntry]:
        """Revoked certificates, oldest revocation first; with ``now``, only those not yet expired;
        with ``issuing_ca``, only those that issuing CA signed (what its CRL lists).

        Dropping expired entries is allowed by RFC 5280 (5.1.2.6) and keeps the CRL small with
        short-lived unit certificates: an expired certificate is refused for its expiry anyway.
        """
        sql = "SELECT serial, revoked_at, revocation_reason FROM pki_certificates WHERE status = 'revoked'"
        params: list[Any] = []
        if now is not None:
            sql += " AND not_after >= ?"
            params.append(to_text(now))
        if issuing_ca is not None:
            sql += " AND issuing_ca = ?"
            params.append(issuing_ca)
        rows = self._query(sql + " ORDER BY revoked_at, serial", tuple(params))
        return [RevokedEntry(int(s, 16), from_text(at), x509.ReasonFlags(reason)) for s, at, reason in rows]

    # ------------------------------------------------------------------------------ issuing CAs

    def issued_counts(self, now: datetime) -> dict[int, dict[str, int]]:
        """Per issuing CA generation: ``valid`` (unexpired, not revoked) and ``in_use`` (of those, the
        newest of their identity), and ``in_use_<kind>`` for each kind in use."""
        counts: dict[int, dict[str, int]] = {}
        for generation, total in self._query(
            "SELECT issuing_ca, count(*) FROM pki_certificates WHERE status = 'valid' AND not_after >= ? "
            "GROUP BY issuing_ca",
            (to_text(now),),
        ):
            counts.setdefault(int(generation), {"valid": 0, "in_use": 0})["valid"] = int(total)
        for generation, kind, total in self._query(
            f"SELECT c.issuing_ca, c.kind, count(*) FROM pki_certificates c WHERE {_IN_USE} "
            "GROUP BY c.issuing_ca, c.kind",
            (to_text(now),),
        ):
            entry = counts.setdefault(int(generation), {"valid": 0, "in_use": 0})
            entry["in_use"] += int(total)
            entry[f"in_use_{kind}"] = int(total)
        return counts

    def in_use_by(self, issuing_ca: int, now: datetime, limit: int = 5) -> list[tuple[str, str]]:
        """Some (kind, id) whose certificate in use issuing CA `issuing_ca` signed (examples to name)."""
        rows = self._query(
            f"SELECT c.kind, c.id FROM pki_certificates c WHERE c.issuing_ca = ? AND {_IN_USE} "
            "ORDER BY c.kind, c.id LIMIT ?",
            (issuing_ca, to_text(now), limit),
        )
        return [(str(kind), str(ident)) for kind, ident in rows]

    def valid_serials(self, issuing_ca: int, now: datetime) -> list[int]:
        """Serials of every unexpired certificate issuing CA `issuing_ca` signed that is not revoked."""
        rows = self._query(
            "SELECT serial FROM pki_certificates "
            "WHERE issuing_ca = ? AND status = 'valid' AND not_after >= ?",
            (issuing_ca, to_text(now)),
        )
        return [int(serial, 16) for (serial,) in rows]

    # ------------------------------------------------------------------------------ change feeds

    def identities_changed_since(self, moment: datetime) -> list[IdentityRecord]:
        """Identities whose record was written at or after `moment` (callers overlap and dedupe)."""
        rows = self._query(
            f"SELECT {IDENTITY_COLUMNS} FROM pki_identities WHERE updated_at >= ?", (to_text(moment),)
        )
        return [identity_from_row(row) for row in rows]

    def valid_fingerprints(
        self, *, recorded_since: datetime | None = None, expiring_after: datetime | None = None
    ) -> dict[int, tuple[str, datetime]]:
        """Serial -> (SHA-256 fingerprint in hex, not_after) of every valid certificate, optionally only
        those recorded at or after `recorded_since` and those still valid at `expiring_after`."""
        sql = "SELECT serial, fingerprint, not_after FROM pki_certificates WHERE status = 'valid'"
        params: list[str] = []
        for clause, moment in (("recorded_at >= ?", recorded_since), ("not_after >= ?", expiring_after)):
            if moment is not None:
                sql += f" AND {clause}"
                params.append(to_text(moment))
        rows = self._query(sql, tuple(params))
        return {int(serial, 16): (fingerprint, from_text(end)) for serial, fingerprint, end in rows}

    def revoked_since(self, moment: datetime) -> list[int]:
        """Serials revoked at or after `moment`."""
        rows = self._query(
            "SELECT serial FROM pki_certificates WHERE status = 'revoked' AND revoked_at >= ?",
            (to_text(moment),),
        )
        return [int(serial, 16) for (serial,) in rows]

    # -------------------------------------------------------------------------------------- CRLs

    def next_crl_number(self, now: datetime) -> int:
        """Strictly greater than every number handed out before, and never below now's Unix time.

        The clock floor keeps numbers increasing even across a lost or restored database, and
        matches CertificateAuthority.build_crl's default, so the two can be mixed.
        """
        with self.transaction() as conn:
            row = conn.execute("SELECT last_number FROM pki_crl_state WHERE id = 1").fetchone()
            number = max((row[0] + 1) if row else 1, int(now.timestamp()))
            conn.execute(
                "INSERT INTO pki_crl_state (id, last_number) VALUES (1, ?) "
                "ON CONFLICT (id) DO UPDATE SET last_number = excluded.last_number",
                (number,),
            )
        return number
