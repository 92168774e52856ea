"""The audit log: every security decision and who made it, append-only and hash-chained, in SQLite.

Theory of operation
- Each record carries the hash of the record before it (`prev_hash`; the first one carries 64 zeros)
  and its own `hash`: SHA-256 over a canonical JSON of every field, its `seq` and `prev_hash` included.
  Editing, removing or reordering a record therefore breaks the chain at that record, and `verify`
  says which record and how.
- A chain alone cannot see its *last* records being dropped, so a one-row `audit_head(seq, hash)` is
  moved forward in the same transaction as every append; `verify` compares it with the chain's end.
  New records are chained from the head, not from the last row, so a cut tail stays a visible gap.
- Each append is its own BEGIN IMMEDIATE transaction (or joins the caller's, so a state change and its
  audit record commit together; `batch()` groups records into one commit (the event tick's, 64 at
  a time), which is what a reconnect storm on a synchronous PostgreSQL is bounded by: one fsync per
  batch, not per record). The write lock is taken before the head is read, which is what lets
  the CLI and a running gateway append to one file concurrently without forking the chain. Committed
  WAL transactions survive `kill -9` of the process.
- Triggers refuse UPDATE and DELETE on records, and any head change that does not move it forward, so
  a bug cannot rewrite history. Someone with write access to the file can drop the triggers, and then
  only the chain catches them; someone who also recomputes every later hash and the head can only be
  caught against a copy of the head kept elsewhere (`head()`; `fleetgate audit verify` prints it).
- Records never hold secrets: `append` rejects details keys named like a token, password, key or
  secret (at any depth). Callers record what identifies a secret instead: a hash, a fingerprint, a
  serial number.
- Records are small whatever a client sent: every text field is cut to MAX_FIELD characters and
  every text in the details to MAX_DETAIL, ending in how much was cut and a SHA-256 prefix of the
  whole value (so two records of one 60 KB client id still match). Text is stored as given
  otherwise; whoever shows it escapes control characters (gateway/render/safe_text.py).
- A flood of identical denials becomes one record and then one summary per window
  (`AggregatingAuditor`): a flood cannot flood the log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, TextIO

from pki.sqlite import apply_migrations, transaction

mirror = logging.getLogger("fleetgate.audit")  # every appended record, also on the log stream
__all__ = [
    "GENESIS_HASH",
    "AggregatingAuditor",
    "AuditLog",
    "AuditLogCorrupt",
    "AuditRecord",
    "VerifyResult",
]

GENESIS_HASH = "0" * 64
MAX_FIELD = 128  # characters kept of actor, action, subject, outcome, reason
MAX_DETAIL = 256  # characters kept of each text value in the details
# Part of every hashed record so that a future change of the canonical form cannot make an old record
# verify under new rules by accident.
_HASH_FORMAT = 1

_MIGRATIONS: Sequence[str] = (
    f"""
    CREATE TABLE audit_log (
        seq       INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        subject   TEXT NOT NULL,
        outcome   TEXT NOT NULL,
        reason    TEXT NOT NULL,
        details   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );
    CREATE TABLE audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash TEXT NOT NULL
    );
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head WHEN NEW.seq <= OLD.seq
    BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;
    CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
    BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END;
    """,
)

# PostgreSQL (pki/postgres.py): the same tables and the same refusals, as plpgsql triggers. One chain
# for the whole cluster: every node appends under the database's write lock (BEGIN IMMEDIATE there).
_POSTGRES_MIGRATIONS: Sequence[str] = (
    f"""
    CREATE TABLE audit_log (
        seq BIGINT PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        subject TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL,
        prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
    CREATE TABLE audit_head (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, hash TEXT NOT NULL);
    INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
    CREATE FUNCTION audit_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END $$;
    CREATE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN IF NEW.seq <= OLD.seq THEN RAISE EXCEPTION 'the audit head only moves forward'; END IF;
    RETURN NEW; END $$;
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_refuse('the audit log is append-only');
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        FOR EACH ROW EXECUTE FUNCTION audit_refuse('the audit log is append-only');
    CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION audit_head_forward();
    CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION audit_refuse('the audit head cannot be deleted');
    """,
)

_COLUMNS = "seq, at, actor, action, subject, outcome, reason, details, prev_hash, hash"


class AuditLogCorrupt(RuntimeError):
    """The log's own bookkeeping was tampered with so that no record can be chained safely."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    at: str  # ISO-8601 UTC with microseconds, e.g. "2025-03-01T12:00:00.000000Z"
    actor: str  # who decided: "operator/alice", "detector/rate_spike", "system", "unit/TRK-1"
    action: str  # what: "unit.enroll", "cert.revoke", "connect.refused"
    subject: str  # what it was about
    outcome: str  # "ok", "refused", "denied", ...
    reason: str
    # Mutable by type but never mutated; excluded from hashing the record as a Python object.
    details: dict[str, object] = field(hash=False)
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy of the details was a quarter of the cost of each
        # append (the record is mirrored to the log stream as a dict); nothing mutates a record.
        return {name: getattr(self, name) for name in _RECORD_FIELDS}


_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int  # records found intact before the first problem (all of them when ok)
    first_bad_seq: int | None = None
    problem: str = ""  # one sentence: "record 17 was edited", "record 17 is missing", ...
    head_seq: int = 0
    head_hash: str = GENESIS_HASH


def _canonical(record: AuditRecord) -> bytes:
    body = {
        "v": _HASH_FORMAT,
        "seq": record.seq,
        "at": record.at,
        "actor": record.actor,
        "action": record.action,
        "subject": record.subject,
        "outcome": record.outcome,
        "reason": record.reason,
        "details": record.details,
        "prev_hash": record.prev_hash,
    }
    return _dumps(body).encode("utf-8")


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _hash_of(record: AuditRecord) -> str:
    return hashlib.sha256(_canonical(record)).hexdigest()


def record_hash(record: AuditRecord) -> str:
    """The hash a record must carry (for checks that walk part of the chain, e.g. the console's)."""
    return _hash_of(record)


def _utc_text(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware (e.g. datetime.now(UTC))")
    return now.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# Words that make a details key look like it holds a secret. "token"/"key" only as the last word, so
# "token_hash" and "key_fingerprint" (what callers should record) stay allowed.
_SECRET_WORDS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "secret",
        "private",
        "privkey",
        "privatekey",
        "apikey",
        "credential",
        "credentials",
        "bearer",
    }
)
_SECRET_LAST_WORDS = frozenset({"token", "key"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _looks_secret(name: str) -> bool:
    words = [w for w in re.split(r"[_\-. ]+", _CAMEL.sub("_", name).lower()) if w]
    return bool(words) and (words[-1] in _SECRET_LAST_WORDS or any(w in _SECRET_WORDS for w in words))


def _check_no_secrets(value: object, path: str = "details") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if _looks_secret(str(key)):
                raise ValueError(
                    f"audit {path} key {key!r} looks like a secret; record a hash or fingerprint instead"
                )
            _check_no_secrets(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_no_secrets(item, path)


def bounded(text: str, limit: int) -> str:
    """`text`, or its first characters and a note of what was cut: "abc…(+5372 chars, sha256 1f2e…)"."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    keep = max(0, limit - 40)
    return f"{text[:keep]}…(+{len(text) - keep} chars, sha256 {digest})"


def _bounded_values(value: object) -> object:
    if isinstance(value, str):
        return bounded(value, MAX_DETAIL)
    if isinstance(value, dict):
        return {bounded(str(k), MAX_FIELD): _bounded_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded_values(v) for v in value]
    return value


def _normalised_details(details: dict[str, object] | None) -> tuple[dict[str, object], str]:
    """The details as JSON will give them back (texts bounded), and their stored text (canonical JSON)."""
    if details is None:
        return {}, "{}"
    _check_no_secrets(details)
    bounded_details = _bounded_values(details)
    assert isinstance(bounded_details, dict)  # a dict stays a dict
    details = bounded_details
    try:
        text = _dumps(details)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"audit details must be plain JSON values ({exc})") from None
    loaded: dict[str, object] = json.loads(text)
    return loaded, text


def _from_row(row: tuple[Any, ...]) -> AuditRecord:
    seq, at, actor, action, subject, outcome, reason, details_text, prev_hash, digest = row
    try:
        details = json.loads(details_text)
        if not isinstance(details, dict):
            details = {"unparseable": details_text}
    except (TypeError, ValueError):
        details = {"unparseable": details_text}  # tampered; verify will report the record
    return AuditRecord(seq, at, actor, action, subject, outcome, reason, details, prev_hash, digest)


@contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    # One read transaction, so the head and the records are seen at one instant even while another
    # process appends (WAL readers see the snapshot their transaction started with).
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


class AuditLog:
    """The hash-chained audit log in the `audit_log` and `audit_head` tables of `conn`'s database.

    `conn` comes from `pki.sqlite.open_database` (autocommit mode, WAL). Creating an AuditLog
    migrates the schema if needed. An sqlite3 connection holds one transaction at a time, and an
    append joins whatever transaction is open on it; so when other threads use the same connection
    (e.g. through a `pki.store.Registry`), pass the lock they serialise on as `lock`.
    """

    def __init__(
        self, conn: sqlite3.Connection, lock: threading.RLock | None = None, *, node: str | None = None
    ) -> None:
        self._conn = conn
        # In a cluster every node appends to one chain: each record names the node that wrote it.
        self.node = node
        self._lock = threading.RLock() if lock is None else lock
        self.appended = 0  # records this AuditLog appended
        self.appended_bytes = 0  # and their size (canonical JSON and hash), which is what they cost on disk
        self._batched: list[tuple[AuditRecord, int]] | None = None  # inside batch(): not yet committed
        self._batch_stack: ExitStack | None = None  # holds the batch's transaction once begun
        with self._lock:
            apply_migrations(conn, "audit", _MIGRATIONS, _POSTGRES_MIGRATIONS)

    def append(
        self,
        *,
        actor: str,
        action: str,
        subject: str,
        outcome: str,
        reason: str = "",
        details: dict[str, object] | None = None,
        now: datetime,
    ) -> AuditRecord:
        """Record one decision and return it once it is committed (or joined to the open transaction).

        `details` must be plain JSON values and must not contain secrets: a key named like `token`,
        `password`, `key`, `private_key` or `secret` (at any depth) raises ValueError. Pass a hash or a
        fingerprint of the secret instead.
        """
        for name, value in (("actor", actor), ("action", action), ("outcome", outcome)):
            if not value:
                raise ValueError(f"audit {name} must not be empty")
        actor, action, subject, outcome, reason = (
            bounded(v, MAX_FIELD) for v in (actor, action, subject, outcome, reason)
        )
        at = _utc_text(now)
        if self.node and not (details and "node" in details):
            details = {**(details or {}), "node": self.node}
        clean, details_text = _normalised_details(details)
        if self._batch_stack is not None and not self._conn.in_transaction:
            self._batch_stack.enter_context(transaction(self._conn))  # the batch's, committed at its end
        with self._lock, transaction(self._conn) as conn:
            head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                raise AuditLogCorrupt("the audit head row is missing; run `fleetgate audit verify`")
            unsigned = AuditRecord(
                head[0] + 1, at, actor, action, subject, outcome, reason, clean, head[1], ""
            )
            canonical = _canonical(unsigned)
            record = replace(unsigned, hash=hashlib.sha256(canonical).hexdigest())
            try:
                conn.execute(
                    f"INSERT INTO audit_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.seq,
                        at,
                        actor,
                        action,
                        subject,
                        outcome,
                        reason,
                        details_text,
                        record.prev_hash,
                        record.hash,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AuditLogCorrupt(
                    f"audit record {record.seq} already exists but the head says it does not; "
                    "run `fleetgate audit verify`"
                ) from None
            conn.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (record.seq, record.hash))
        if self._batched is not None:
            self._batched.append((record, len(canonical) + len(record.hash)))
        else:
            self._committed(record, len(canonical) + len(record.hash))
        return record

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every append inside commits at once, or none does (the exception propagates): one write
        transaction, begun at the first append (a batch with none costs nothing), and one commit. The
        records reach the metrics and the log stream only once committed. Re-entrant."""
        if self._batched is not None:
            yield
            return
        with self._lock, ExitStack() as stack:
            self._batched = []
            self._batch_stack = stack
            try:
                yield
            finally:
                done, self._batched, self._batch_stack = self._batched, None, None
        for record, size in done:  # reached only when the commit (the stack's exit) succeeded
            self._committed(record, size)

    def _committed(self, record: AuditRecord, size: int) -> None:
        self.appended += 1  # for the audit-growth metrics; counts what this process wrote
        self.appended_bytes += size
        # Mirrored to the log stream, for whoever ingests logs rather than this database (a SIEM):
        # the message is a short summary (the log formatters escape what a client put in it), the
        # record itself rides along for the JSON format.
        mirror.info(
            "%s %s %s by %s",
            record.action,
            record.subject,
            record.outcome,
            record.actor,
            extra={"audit": record.as_dict()},
        )

    def records(self, since_seq: int = 0, limit: int | None = None) -> list[AuditRecord]:
        """Records with seq > since_seq, oldest first, at most `limit` of them."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?",
                (since_seq, 2**62 if limit is None else limit),
            ).fetchall()
        return [_from_row(row) for row in rows]

    def tail_after(self, seq: int, limit: int = 1000) -> list[AuditRecord]:
        """The next records after `seq`, for a live stream that polls with the last seq it sent."""
        return self.records(since_seq=seq, limit=limit)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the newest record; keep a copy elsewhere to anchor a later verify."""
        with self._lock:
            row = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))

    def export_jsonl(self, out: TextIO) -> int:
        """Write every record as one JSON object per line, oldest first; return how many."""
        count = 0
        with self._lock, _snapshot(self._conn):
            for row in self._conn.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"):
                out.write(json.dumps(_from_row(row).as_dict(), sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
        return count

    def verify(self) -> VerifyResult:
        """Walk the whole chain and the head; report the first problem found."""
        with self._lock, _snapshot(self._conn):
            return self._verify()

    def _verify(self) -> VerifyResult:
        conn = self._conn
        head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        prev_hash, checked = GENESIS_HASH, 0

        def bad(seq: int | None, problem: str) -> VerifyResult:
            head_seq, head_hash = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
            return VerifyResult(False, checked, seq, problem, head_seq, head_hash)

        for row in conn.execute(f"SELECT {_COLUMNS} FROM audit_log ORDER BY seq"):
            record = _from_row(row)
            expected = checked + 1
            if record.seq != expected:
                if record.seq > expected:
                    return bad(expected, f"record {expected} is missing")
                return bad(record.seq, "records out of order")
            if _hash_of(record) != record.hash:
                if self._was_moved(record):
                    return bad(record.seq, "records out of order")
                return bad(record.seq, f"record {record.seq} was edited")
            if record.prev_hash != prev_hash:
                # This record is intact, so what it chained to has changed or moved.
                linked = conn.execute("SELECT 1 FROM audit_log WHERE hash = ?", (record.prev_hash,))
                if linked.fetchone() is not None:
                    return bad(record.seq, "records out of order")
                edited = max(record.seq - 1, 1)
                return bad(edited, f"record {edited} was edited")
            prev_hash = record.hash
            checked += 1

        if head is None:
            return bad(None, "the audit head is missing")
        head_seq, head_hash = int(head[0]), str(head[1])
        if head_seq > checked:
            return bad(checked + 1, f"record {checked + 1} is missing")
        if head_seq < checked:
            return bad(head_seq + 1, f"record {head_seq + 1} was not written through the audit log")
        if head_hash != prev_hash:
            return bad(checked, f"record {checked} was edited")
        return VerifyResult(True, checked, None, "", head_seq, head_hash)

    def _was_moved(self, record: AuditRecord) -> bool:
        # Failure path only. An intact record that now sits at another seq hashes correctly with the
        # seq it was written at, which its prev_hash links give away: follow them back to genesis.
        links: dict[str, str] = dict(self._conn.execute("SELECT hash, prev_hash FROM audit_log").fetchall())
        original, link = 1, record.prev_hash
        seen: str | None
        while link != GENESIS_HASH:
            seen = links.get(link)
            original += 1
            if seen is None or original > len(links) + 1:  # a broken link, or a cycle
                return False
            link = seen
        return original != record.seq and _hash_of(replace(record, seq=original)) == record.hash


@dataclass(slots=True)
class _Window:
    started: float  # monotonic seconds
    pending: int  # denials seen since the last record written for this key
    subject: str  # the latest one's subject
    details: dict[str, object] | None = None  # the latest one's details


class AggregatingAuditor:
    """Writes the first of a run of identical denials at once, then at most one summary per window.

    Denials are identical when actor, action, reason and outcome agree (the subject, e.g. the topic,
    may vary; a summary names the latest). Every record written carries
    `details={"count": n, "window_s": w}`, so summing `count` over them gives the number of denials.
    A run ends after a window with no denial; the next one is written at once again. Call `flush`
    periodically (and with `force=True` at shutdown) so summaries do not wait for the next denial.

    Memory is bounded: past `max_keys` distinct runs, new ones are folded per (action, reason, outcome)
    under the actor "various", so a flood from many sources cannot flood the log either.
    """

    def __init__(self, log: AuditLog, window: float = 60.0, max_keys: int = 10_000) -> None:
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, not {window!r}")
        self._log = log
        self.window = window
        self.max_keys = max_keys
        self._runs: dict[tuple[str, str, str, str], _Window] = {}

    def note_denial(
        self,
        actor: str,
        action: str,
        subject: str,
        reason: str,
        now_monotonic: float,
        wall: datetime,
        outcome: str = "denied",
        details: dict[str, object] | None = None,
    ) -> AuditRecord | None:
        """Count one denial; return the record written for it, if one was.

        `details` (the latest denial's) are written with the record that carries its count."""
        key = (actor, action, reason, outcome)
        run = self._runs.get(key)
        if run is None and len(self._runs) >= self.max_keys:
            key = ("various", action, reason, outcome)
            run = self._runs.get(key)
        if run is not None and now_monotonic - run.started >= self.window:
            if run.pending:  # still flooding: summarise the window that ended; this one opens the next
                summary = self._summarise(key, run, wall)
                self._runs[key] = _Window(now_monotonic, 1, subject, details)
                return summary
            run = None  # a quiet window ended the run
        if run is None:
            self._runs[key] = _Window(now_monotonic, 0, subject)
            return self._log.append(
                actor=key[0],
                action=action,
                subject=subject,
                outcome=outcome,
                reason=reason,
                details={**(details or {}), "count": 1, "window_s": self.window},
                now=wall,
            )
        run.pending += 1
        run.subject = subject
        run.details = details
        return None

    def flush(self, now_monotonic: float, wall: datetime, *, force: bool = False) -> list[AuditRecord]:
        """Write the summaries of windows that have ended (all of them with `force`)."""
        written: list[AuditRecord] = []
        for key, run in list(self._runs.items()):
            if not force and now_monotonic - run.started < self.window:
                continue
            if run.pending:
                written.append(self._summarise(key, run, wall))
                if not force:  # the run may go on: count its next window from here
                    self._runs[key] = _Window(now_monotonic, 0, run.subject, run.details)
                    continue
            del self._runs[key]
        return written

    def _summarise(self, key: tuple[str, str, str, str], run: _Window, wall: datetime) -> AuditRecord:
        actor, action, reason, outcome = key
        return self._log.append(
            actor=actor,
            action=action,
            subject=run.subject,
            outcome=outcome,
            reason=reason,
            details={**(run.details or {}), "count": run.pending, "window_s": self.window},
            now=wall,
        )
