"""The audit log: chain, head, tamper detection by raw SQL, concurrency, kill -9, secrets, aggregation."""

from __future__ import annotations

import io
import itertools
import json
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.stores.audit_log import (
    GENESIS_HASH,
    AggregatingAuditor,
    AuditLog,
    AuditLogCorrupt,
    AuditRecord,
)
from pki.sqlite import open_database, open_store, transaction

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
N = 6  # records in the `filled` fixture


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "fleetgate.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request: pytest.FixtureRequest, db_path: Path) -> Iterator[sqlite3.Connection]:
    """Every test that takes the log runs against both engines (pki/postgres.py)."""
    connection = (
        open_database(db_path) if request.param == "sqlite" else open_store(request.getfixturevalue("pg_url"))
    )
    yield connection
    connection.close()


@pytest.fixture
def log(conn: sqlite3.Connection) -> AuditLog:
    return AuditLog(conn)


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    for i in range(1, N + 1):
        log.append(
            actor="operator/alice",
            action="unit.add",
            subject=f"unit/TRK-{i}",
            outcome="ok",
            reason="",
            details={"serial": f"{i:x}", "n": i},
            now=T0 + timedelta(seconds=i),
        )
    return log


def tamper(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> None:
    """What an attacker with write access to the file does: drop the guards, then edit."""
    if getattr(conn, "dialect", "sqlite") == "postgresql":
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute("ALTER TABLE audit_head DISABLE TRIGGER USER")
    for trigger in (
        "audit_log_no_update",
        "audit_log_no_delete",
        "audit_head_forward_only",
        "audit_head_no_delete",
    ):
        if getattr(conn, "dialect", "sqlite") == "sqlite":
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute(sql, params)


# ------------------------------------------------------------------------------------ append, read


def test_append_chains_and_verifies(filled: AuditLog) -> None:
    records = filled.records()
    assert [r.seq for r in records] == list(range(1, N + 1))
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    assert len({r.hash for r in records}) == N
    result = filled.verify()
    assert result.ok and result.checked == N and result.first_bad_seq is None and result.problem == ""
    assert (result.head_seq, result.head_hash) == filled.head() == (N, records[-1].hash)


def test_append_returns_what_is_stored(log: AuditLog) -> None:
    record = log.append(
        actor="unit/TRK-1",
        action="connect.refused",
        subject="unit/TRK-1",
        outcome="refused",
        reason="client_id_mismatch",
        details={"ids": ("a", "b"), "nested": {"x": 1.5}},
        now=datetime(2025, 3, 1, 13, 0, 0, 7, tzinfo=UTC),
    )
    assert record == log.records()[0]
    assert record.details == {"ids": ["a", "b"], "nested": {"x": 1.5}}
    assert record.at == "2025-03-01T13:00:00.000007Z"
    assert re.fullmatch(r"[0-9a-f]{64}", record.hash)


def test_at_is_utc_whatever_the_input_zone(log: AuditLog) -> None:
    from datetime import timezone

    local = datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    record = log.append(actor="system", action="gateway.start", subject="gateway", outcome="ok", now=local)
    assert record.at == "2025-03-01T12:00:00.000000Z"


def test_records_since_limit_and_tail(filled: AuditLog) -> None:
    assert [r.seq for r in filled.records(since_seq=2, limit=3)] == [3, 4, 5]
    assert [r.seq for r in filled.tail_after(N - 1)] == [N]
    assert filled.tail_after(N) == []


def test_export_jsonl(filled: AuditLog) -> None:
    out = io.StringIO()
    assert filled.export_jsonl(out) == N
    lines = out.getvalue().splitlines()
    assert len(lines) == N
    parsed = [json.loads(line) for line in lines]
    assert [AuditRecord(**p) for p in parsed] == filled.records()


def test_schema_migration_is_idempotent(filled: AuditLog, conn: sqlite3.Connection) -> None:
    again = AuditLog(conn)
    again.append(actor="system", action="x", subject="y", outcome="ok", now=T0)
    assert again.verify().ok and again.verify().checked == N + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"now": datetime(2025, 1, 1)},  # naive: ambiguous time
        {"actor": ""},
        {"action": ""},
        {"details": {"when": datetime(2025, 1, 1, tzinfo=UTC)}},  # not a JSON value
        {"details": {"x": float("nan")}},
    ],
)
def test_append_rejects_bad_input(log: AuditLog, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"actor": "system", "action": "a", "subject": "s", "outcome": "ok", "now": T0}
    args.update(kwargs)
    with pytest.raises(ValueError):
        log.append(**args)  # type: ignore[arg-type]
    assert log.records() == []


@pytest.mark.parametrize(
    "details",
    [
        {"token": "abc"},
        {"password": "x"},
        {"key": "x"},
        {"private_key": "x"},
        {"secret": "x"},
        {"enrollment_token": "x"},
        {"apiKey": "x"},
        {"Client-Secret": "x"},
        {"db_password_hash": "x"},
        {"outer": {"inner": [{"token": "x"}]}},
    ],
)
def test_secret_looking_keys_are_rejected(log: AuditLog, details: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="secret"):
        log.append(actor="system", action="a", subject="s", outcome="ok", details=details, now=T0)
    assert log.records() == []


def test_fingerprints_and_hashes_are_fine(log: AuditLog) -> None:
    details: dict[str, object] = {
        "token_hash": "ab",
        "key_fingerprint": "cd",
        "serial": "1f",
        "public_key_sha256": "ef",
        "keyword": "k",
        "monkey": 1,
        "expires_at": "2025-01-01T00:00:00Z",
    }
    assert log.append(actor="system", action="a", subject="s", outcome="ok", details=details, now=T0)


def test_triggers_make_records_append_only(filled: AuditLog, conn: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_log SET reason = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_log WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="forward"):
        conn.execute("UPDATE audit_head SET seq = 1")
    assert filled.verify().ok


def test_joins_the_callers_transaction(filled: AuditLog, conn: sqlite3.Connection) -> None:
    head = filled.head()
    with pytest.raises(RuntimeError, match="boom"), transaction(conn):
        filled.append(actor="system", action="a", subject="s", outcome="ok", now=T0)
        raise RuntimeError("boom")
    assert filled.head() == head and len(filled.records()) == N and filled.verify().ok


def test_a_batch_commits_its_records_at_once(
    filled: AuditLog, conn: sqlite3.Connection, db_path: Path
) -> None:
    """A tick's records in one commit: none visible to another reader before the batch ends, all
    after, chained on; the metrics count them once committed."""
    url = getattr(conn, "url", None)  # PgConnection's; the SQLite log is the file at db_path
    reader = open_store(url) if isinstance(url, str) else open_database(db_path)
    before = filled.appended
    with filled.batch():
        for i in range(5):
            filled.append(actor="system", action="mqtt.connect", subject=f"TRK-{i}", outcome="ok", now=T0)
        assert filled.appended == before  # not committed yet
        assert reader.execute("SELECT seq FROM audit_head").fetchone()[0] == N
    assert reader.execute("SELECT seq FROM audit_head").fetchone()[0] == N + 5
    reader.close()
    assert filled.appended == before + 5
    assert filled.head()[0] == N + 5 and filled.verify().ok
    assert [r.subject for r in filled.records(since_seq=N)] == [f"TRK-{i}" for i in range(5)]


def test_a_failed_batch_leaves_nothing(filled: AuditLog) -> None:
    head, appended = filled.head(), filled.appended
    with pytest.raises(RuntimeError, match="disk"), filled.batch():
        filled.append(actor="system", action="mqtt.connect", subject="TRK-1", outcome="ok", now=T0)
        raise RuntimeError("disk full")
    assert filled.head() == head and filled.appended == appended and filled.verify().ok
    filled.append(actor="system", action="mqtt.connect", subject="TRK-2", outcome="ok", now=T0)
    assert filled.head()[0] == N + 1 and filled.verify().ok


def test_an_empty_batch_takes_no_write_lock(db_path: Path) -> None:
    """The gateway opens a batch every event tick; a tick with nothing to record must not hold the
    database's write lock (the CLI writes meanwhile)."""
    log = AuditLog(open_database(db_path))
    cli = open_database(db_path)
    cli.execute("PRAGMA busy_timeout = 0")
    with log.batch():
        cli.execute("BEGIN IMMEDIATE")  # would raise "database is locked" if the batch held it
        cli.execute("ROLLBACK")


# ----------------------------------------------------------------------------------------- tamper

FIELDS = {
    "at": "'2000-01-01T00:00:00.000000Z'",
    "actor": "'operator/mallory'",
    "action": "'unit.remove'",
    "subject": "'unit/OTHER'",
    "outcome": "'denied'",
    "reason": "'nothing_to_see'",
    "details": """'{"n":999,"serial":"ff"}'""",
    "prev_hash": "'" + "1" * 64 + "'",
    "hash": "'" + "2" * 64 + "'",
}


@pytest.mark.parametrize("seq", range(1, N + 1))
@pytest.mark.parametrize("column", sorted(FIELDS))
def test_editing_any_field_of_any_record_is_named(
    filled: AuditLog, conn: sqlite3.Connection, column: str, seq: int
) -> None:
    tamper(conn, f"UPDATE audit_log SET {column} = {FIELDS[column]} WHERE seq = ?", (seq,))
    result = filled.verify()
    assert not result.ok
    assert (result.first_bad_seq, result.problem) == (seq, f"record {seq} was edited")
    assert result.checked == seq - 1


def test_garbage_details_text_is_an_edit(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "UPDATE audit_log SET details = 'not json' WHERE seq = 2")
    assert filled.verify().problem == "record 2 was edited"
    assert filled.records()[1].details == {"unparseable": "not json"}


def test_editing_seq_is_named(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "UPDATE audit_log SET seq = 100 WHERE seq = 3")
    result = filled.verify()
    assert (result.first_bad_seq, result.problem) == (3, "record 3 is missing")


def test_rehashed_edit_is_caught_by_the_next_record(filled: AuditLog, conn: sqlite3.Connection) -> None:
    # A careful forger recomputes the edited record's own hash; its successor still points at the old one.
    _forge(conn, 3, reason="forged")
    result = filled.verify()
    assert (result.first_bad_seq, result.problem) == (3, "record 3 was edited")


def test_rehashed_edit_of_the_last_record_is_caught_by_the_head(
    filled: AuditLog, conn: sqlite3.Connection
) -> None:
    _forge(conn, N, outcome="refused")
    result = filled.verify()
    assert (result.first_bad_seq, result.problem) == (N, f"record {N} was edited")


def _forge(conn: sqlite3.Connection, seq: int, **changes: str) -> None:
    from dataclasses import replace

    from gateway.stores.audit_log import _hash_of

    original = next(r for r in AuditLog(conn).records() if r.seq == seq)
    forged = replace(original, **changes)  # type: ignore[arg-type]
    forged = replace(forged, hash=_hash_of(forged))
    for column, value in changes.items():
        tamper(conn, f"UPDATE audit_log SET {column} = ? WHERE seq = ?", (value, seq))
    tamper(conn, "UPDATE audit_log SET hash = ? WHERE seq = ?", (forged.hash, seq))


def test_deleting_a_middle_record(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM audit_log WHERE seq = 3")
    result = filled.verify()
    assert (result.ok, result.first_bad_seq, result.problem, result.checked) == (
        False,
        3,
        "record 3 is missing",
        2,
    )


def test_deleting_the_first_record(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM audit_log WHERE seq = 1")
    assert filled.verify().problem == "record 1 is missing"


@pytest.mark.parametrize("dropped", [1, 3])
def test_deleting_the_last_records(filled: AuditLog, conn: sqlite3.Connection, dropped: int) -> None:
    tamper(conn, "DELETE FROM audit_log WHERE seq > ?", (N - dropped,))
    result = filled.verify()
    first_gone = N - dropped + 1
    assert (result.first_bad_seq, result.problem) == (first_gone, f"record {first_gone} is missing")


def test_a_cut_tail_stays_visible_after_new_appends(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM audit_log WHERE seq = ?", (N,))
    filled.append(actor="system", action="a", subject="s", outcome="ok", now=T0)
    assert filled.verify().problem == f"record {N} is missing"


def test_deleting_everything_but_the_head(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM audit_log")
    assert filled.verify().problem == "record 1 is missing"


def test_deleting_the_head(filled: AuditLog, conn: sqlite3.Connection) -> None:
    tamper(conn, "DELETE FROM audit_head")
    assert (filled.verify().ok, filled.verify().problem) == (False, "the audit head is missing")
    with pytest.raises(AuditLogCorrupt):
        filled.append(actor="system", action="a", subject="s", outcome="ok", now=T0)


@pytest.mark.parametrize(("a", "b"), [(2, 4), (3, 4), (1, N)])
def test_swapping_two_records(filled: AuditLog, conn: sqlite3.Connection, a: int, b: int) -> None:
    tamper(conn, "UPDATE audit_log SET seq = -1 WHERE seq = ?", (a,))
    tamper(conn, "UPDATE audit_log SET seq = ? WHERE seq = ?", (a, b))
    tamper(conn, "UPDATE audit_log SET seq = ? WHERE seq = -1", (b,))
    result = filled.verify()
    assert (result.first_bad_seq, result.problem) == (a, "records out of order")


def test_record_inserted_behind_the_logs_back(filled: AuditLog, conn: sqlite3.Connection) -> None:
    from gateway.stores.audit_log import _hash_of

    last = filled.records()[-1]
    forged = AuditRecord(N + 1, last.at, "system", "a", "s", "ok", "", {}, last.hash, "")
    forged = AuditRecord(**{**forged.as_dict(), "hash": _hash_of(forged)})
    conn.execute(
        "INSERT INTO audit_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            forged.seq,
            forged.at,
            forged.actor,
            forged.action,
            forged.subject,
            forged.outcome,
            forged.reason,
            "{}",
            forged.prev_hash,
            forged.hash,
        ),
    )
    result = filled.verify()
    problem = f"record {N + 1} was not written through the audit log"
    assert (result.first_bad_seq, result.problem) == (N + 1, problem)
    with pytest.raises(AuditLogCorrupt):
        filled.append(actor="system", action="a", subject="s", outcome="ok", now=T0)


# ------------------------------------------------------------------------------- concurrency, crash


def test_concurrent_appends_from_two_connections_keep_one_chain(db_path: Path) -> None:
    AuditLog(open_database(db_path))  # migrate once up front, as the gateway does at start
    per_writer = 150
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        conn = open_database(db_path)
        try:
            log = AuditLog(conn)
            for i in range(per_writer):
                log.append(actor=name, action="a", subject=str(i), outcome="ok", now=T0)
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(f"system/{n}",)) for n in ("cli", "gateway")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    log = AuditLog(open_database(db_path))
    result = log.verify()
    assert result.ok and result.checked == 2 * per_writer
    records = log.records()
    for name in ("system/cli", "system/gateway"):  # each writer's records kept its own order
        assert [r.subject for r in records if r.actor == name] == [str(i) for i in range(per_writer)]


def test_committed_records_survive_kill_9(db_path: Path) -> None:
    script = f"""
import os, signal
from datetime import UTC, datetime
from pathlib import Path
from gateway.stores.audit_log import AuditLog
from pki.sqlite import open_database
log = AuditLog(open_database(Path({str(db_path)!r})))
for i in range(25):
    log.append(actor="system", action="a", subject=str(i), outcome="ok", now=datetime.now(UTC))
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert done.returncode == -9, done.stderr.decode()
    result = AuditLog(open_database(db_path)).verify()
    assert result.ok and result.checked == 25


# ----------------------------------------------------------------------------------- aggregation


def test_a_flood_becomes_one_record_plus_one_summary_per_window(log: AuditLog) -> None:
    auditor = AggregatingAuditor(log, window=60.0)
    written = []
    for i in range(10_000):  # 10,000 denials over 300 s
        now = i * 0.03
        record = auditor.note_denial(
            actor="unit/TRK-1",
            action="mqtt.publish",
            subject=f"fleet/TRK-2/cmd/{i % 7}",
            reason="topic_outside_namespace",
            now_monotonic=now,
            wall=T0 + timedelta(seconds=now),
        )
        if record is not None:
            written.append(record)
        if i % 100 == 0:
            written.extend(auditor.flush(now, T0 + timedelta(seconds=now)))
    written.extend(auditor.flush(300.0, T0 + timedelta(seconds=300), force=True))
    assert written == log.records()
    assert 2 <= len(written) <= 1 + 300 / 60 + 1
    assert written[0].details == {"count": 1, "window_s": 60.0}
    assert sum(int(r.details["count"]) for r in written) == 10_000  # type: ignore[call-overload]
    assert {(r.actor, r.action, r.reason, r.outcome) for r in written} == {
        ("unit/TRK-1", "mqtt.publish", "topic_outside_namespace", "denied")
    }
    assert log.verify().ok


def test_summary_written_when_the_next_denial_comes_after_the_window(log: AuditLog) -> None:
    auditor = AggregatingAuditor(log, window=10.0)
    first = auditor.note_denial("unit/A", "mqtt.subscribe", "#", "overreach", 0.0, T0)
    assert first is not None and first.subject == "#"
    for t in range(1, 10):
        assert auditor.note_denial("unit/A", "mqtt.subscribe", f"x/{t}", "overreach", float(t), T0) is None
    summary = auditor.note_denial("unit/A", "mqtt.subscribe", "y", "overreach", 10.0, T0)
    assert summary is not None
    assert (summary.subject, summary.details) == ("x/9", {"count": 9, "window_s": 10.0})
    # the denial at t=10 opened the next window and waits for its summary
    assert [r.details["count"] for r in auditor.flush(20.0, T0)] == [1]
    assert auditor.flush(30.0, T0) == []  # a quiet window ends the run...
    again = auditor.note_denial("unit/A", "mqtt.subscribe", "z", "overreach", 31.0, T0)
    assert again is not None and again.details["count"] == 1  # ...and the next denial is written at once


def test_different_reasons_or_actors_are_separate_runs(log: AuditLog) -> None:
    auditor = AggregatingAuditor(log, window=60.0)
    for reason in ("a", "b"):
        for actor in ("unit/1", "unit/2"):
            for i in range(50):
                auditor.note_denial(actor, "mqtt.publish", "t", reason, float(i), T0)
    assert len(log.records()) == 4
    summaries = auditor.flush(1.0, T0, force=True)
    assert len(summaries) == 4 and all(r.details["count"] == 49 for r in summaries)


def test_flush_leaves_running_windows_alone(log: AuditLog) -> None:
    auditor = AggregatingAuditor(log, window=60.0)
    for t in range(5):
        auditor.note_denial("unit/A", "mqtt.publish", "t", "r", float(t), T0)
    assert auditor.flush(30.0, T0) == []
    assert [r.details["count"] for r in auditor.flush(61.0, T0)] == [4]


def test_many_sources_fold_into_one_run(log: AuditLog) -> None:
    auditor = AggregatingAuditor(log, window=60.0, max_keys=3)
    for i in range(1000):
        auditor.note_denial(
            f"address/10.0.{i // 256}.{i % 256}", "tls.handshake", "x", "bad_cert", 1.0, T0, outcome="refused"
        )
    records = log.records() + auditor.flush(2.0, T0, force=True)
    assert len(records) == 5  # three sources, then "various": first + summary
    assert records[3].actor == "various"
    assert sum(int(r.details["count"]) for r in records) == 1000  # type: ignore[call-overload]
