"""SQLite plumbing and the CA registry."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pki.authority import CertificateAuthority
from pki.enrollment import TokenRecord, hash_token
from pki.errors import AlreadyExistsError, NotFoundError, PkiError, StoreError
from pki.keys import PrivateKey
from pki.names import make_identity
from pki.sqlite import apply_migrations, open_database, open_store, schema_version, transaction
from pki.store import IDENTITY_STATES, MIGRATIONS, Registry

from .conftest import NOW, TD, make_csr

UNIT = make_identity("unit", "TRK-1", TD)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where the registry lives: the registry's tests run against both engines (pki/postgres.py)."""
    if request.param == "sqlite":
        return str(tmp_path / "db" / "fleetgate.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def registry(target: str) -> Iterator[Registry]:
    conn = open_store(target)
    yield Registry(conn)
    conn.close()


# ------------------------------------------------------------------------------------------ sqlite


def test_open_database_settings(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "fleetgate.db"
    conn = open_database(path, synchronous="full")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.isolation_level is None
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn.close()


def test_garbage_file_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.db"
    path.write_bytes(b"this is definitely not an SQLite database" * 100)
    with pytest.raises(StoreError) as info:
        open_database(path)
    assert info.value.reason == "corrupt_database"
    assert str(path) in info.value.message and "fleetgate backup" in info.value.message


def test_unopenable_path_is_a_clear_store_error(tmp_path: Path) -> None:
    (tmp_path / "fleetgate.db").mkdir()
    with pytest.raises(StoreError) as info:
        open_database(tmp_path / "fleetgate.db")
    assert info.value.reason == "unreadable_database"


def test_invalid_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        open_database(tmp_path / "db", synchronous="NORMAL; DROP TABLE x")


STEPS = ("CREATE TABLE a (x INTEGER)", "CREATE TABLE b (y TEXT); INSERT INTO b VALUES ('semi;colon')")


def test_migrations_apply_once_and_are_idempotent(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "db")
    assert apply_migrations(conn, "demo", STEPS[:1]) == 1
    assert apply_migrations(conn, "demo", STEPS) == 2
    assert apply_migrations(conn, "demo", STEPS) == 2  # nothing re-run: CREATE TABLE would fail
    assert conn.execute("SELECT y FROM b").fetchall() == [("semi;colon",)]
    assert apply_migrations(conn, "other", ()) == 0  # components are independent


def test_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "db")
    apply_migrations(conn, "demo", STEPS)
    with pytest.raises(StoreError) as info:
        apply_migrations(conn, "demo", STEPS[:1])
    assert info.value.reason == "schema_too_new"
    assert "upgrade fleetgate" in info.value.message


def test_failing_migration_step_leaves_no_trace(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "db")
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(conn, "demo", ("CREATE TABLE a (x); CREATE TABLE broken (",))
    assert schema_version(conn, "demo") == 0
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'a'").fetchall() == []


def test_migration_with_trigger_body(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "db")
    step = """
        CREATE TABLE t (x INTEGER); CREATE TABLE log (x INTEGER);
        CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.x); END;
    """
    apply_migrations(conn, "demo", (step,))
    conn.execute("INSERT INTO t VALUES (7)")
    assert conn.execute("SELECT x FROM log").fetchall() == [(7,)]


def test_transaction_rolls_back_and_nests(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "db")
    conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(RuntimeError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        with transaction(conn):  # joins the outer one
            conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("boom")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (3)")
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(3,)]


# ---------------------------------------------------------------------------------------- registry


def test_registry_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = Registry(open_database(path))
    first.add_identity("unit", "TRK-1", NOW)
    second = Registry(open_database(path))  # a second process opening the same file
    assert second.schema_version == len(MIGRATIONS)
    assert second.get_identity("unit", "TRK-1") is not None


def test_identities(registry: Registry) -> None:
    record = registry.add_identity("unit", "TRK-1", NOW, {"vin": "WDB123"})
    assert (record.kind, record.id, record.state, record.metadata) == (
        "unit",
        "TRK-1",
        "registered",
        {"vin": "WDB123"},
    )
    assert record.created_at == NOW
    registry.add_identity("partner", "acme", NOW)
    registry.add_identity("unit", "TRK-2", NOW)
    with pytest.raises(AlreadyExistsError) as info:
        registry.add_identity("unit", "TRK-1", NOW)
    assert info.value.reason == "already_exists"
    assert [r.id for r in registry.list_identities("unit")] == ["TRK-1", "TRK-2"]
    assert len(registry.list_identities()) == 3
    later = NOW + timedelta(hours=1)
    updated = registry.set_state("unit", "TRK-1", "quarantined", later)
    assert updated.state == "quarantined" and updated.updated_at == later and updated.created_at == NOW
    assert registry.get_identity("unit", "nope") is None


@pytest.mark.parametrize(
    ("first", "second"), [("unit", "partner"), ("partner", "unit"), ("service", "operator")]
)
def test_an_id_belongs_to_one_client_kind(registry: Registry, first: str, second: str) -> None:
    # A bare MQTT client id cannot say which kind it means, so two kinds may never share an id.
    registry.add_identity(first, "TRK-1", NOW)
    with pytest.raises(AlreadyExistsError) as info:
        registry.add_identity(second, "TRK-1", NOW)
    assert info.value.reason == "id_taken"
    assert info.value.message == (
        f"{first} TRK-1 already holds the id TRK-1, and units, operators, services and partners share one "
        f"id space; pick another id for the {second}"
    )
    assert [(r.kind, r.id) for r in registry.list_identities()] == [(first, "TRK-1")]
    registry.add_identity(second, "TRK-2", NOW)  # any other id is fine
    registry.add_identity("gateway", "TRK-1", NOW)  # the server certificate never connects as a client
    with pytest.raises(NotFoundError):
        registry.set_state("unit", "nope", "enrolled", NOW)
    with pytest.raises(PkiError) as bad:
        registry.set_state("unit", "TRK-1", "sleeping", NOW)
    assert bad.value.reason == "invalid_state" and all(s in bad.value.message for s in IDENTITY_STATES)


def test_naive_timestamps_are_refused(registry: Registry) -> None:
    with pytest.raises(ValueError, match="timezone"):
        registry.add_identity("unit", "TRK-1", NOW.replace(tzinfo=None))


def token(
    unit_id: str = "TRK-1", secret: str = "s3cret", ttl: timedelta = timedelta(hours=24)
) -> TokenRecord:
    return TokenRecord(hash_token(secret), unit_id, NOW, NOW + ttl, None)


def test_tokens(registry: Registry) -> None:
    registry.add_identity("unit", "TRK-1", NOW)
    registry.add_token(token())
    assert registry.get_token(hash_token("s3cret")) == token()
    assert registry.pending_tokens("unit", "TRK-1", NOW) == [token()]
    with pytest.raises(NotFoundError):
        registry.add_token(token(unit_id="TRK-404", secret="other"))
    assert registry.consume_token(hash_token("s3cret"), NOW) is True
    assert registry.consume_token(hash_token("s3cret"), NOW) is False
    assert registry.consume_token(hash_token("unknown"), NOW) is False
    used = registry.get_token(hash_token("s3cret"))
    assert used is not None and used.used_at == NOW
    assert registry.pending_tokens("unit", "TRK-1", NOW) == []


def test_revoke_tokens_expires_only_pending_ones(registry: Registry) -> None:
    registry.add_identity("unit", "TRK-1", NOW)
    for secret in ("a", "b", "c"):
        registry.add_token(token(secret=secret))
    registry.consume_token(hash_token("a"), NOW)
    later = NOW + timedelta(minutes=5)
    assert registry.revoke_tokens("unit", "TRK-1", later) == 2
    assert registry.revoke_tokens("unit", "TRK-1", later) == 0
    expired = registry.get_token(hash_token("b"))
    assert expired is not None and expired.expires_at == later
    used = registry.get_token(hash_token("a"))
    assert used is not None and used.expires_at == NOW + timedelta(hours=24)


def test_consume_token_wins_exactly_once_across_connections(target: str) -> None:
    setup = Registry(open_store(target))
    setup.add_identity("unit", "TRK-1", NOW)
    setup.add_token(token())
    contenders = [Registry(open_store(target)) for _ in range(8)]
    barrier = threading.Barrier(len(contenders))
    results: list[bool] = []

    def race(registry: Registry) -> None:
        barrier.wait()
        results.append(registry.consume_token(hash_token("s3cret"), NOW))

    threads = [threading.Thread(target=race, args=(r,)) for r in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_certificates(registry: Registry, ca: CertificateAuthority, key: PrivateKey) -> None:
    first = ca.issue(make_csr(key), UNIT, NOW, timedelta(days=30))
    second = ca.issue(make_csr(key), UNIT, NOW + timedelta(days=20), timedelta(days=30))
    record = registry.add_certificate(first, UNIT, NOW)
    registry.add_certificate(second, UNIT, NOW + timedelta(days=20))
    assert record.serial == first.serial_number and record.serial.bit_length() > 64
    assert (record.kind, record.id, record.status) == ("unit", "TRK-1", "valid")
    assert record.not_after == first.not_valid_after_utc and record.certificate == first
    assert len(record.fingerprint) == 64
    with pytest.raises(AlreadyExistsError):
        registry.add_certificate(first, UNIT, NOW)
    assert [c.serial for c in registry.list_certificates("unit", "TRK-1")] == [
        first.serial_number,
        second.serial_number,
    ]
    assert registry.list_certificates("partner") == []
    latest = registry.latest_certificate("unit", "TRK-1")
    assert latest is not None and latest.serial == second.serial_number
    assert registry.get_certificate(12345) is None

    assert registry.revoke_certificate(first.serial_number, x509.ReasonFlags.key_compromise, NOW) is True
    assert registry.revoke_certificate(first.serial_number, x509.ReasonFlags.superseded, NOW) is False
    assert registry.revoke_certificate(12345, x509.ReasonFlags.superseded, NOW) is False
    assert registry.is_revoked(first.serial_number) and not registry.is_revoked(second.serial_number)
    revoked = registry.get_certificate(first.serial_number)
    assert revoked is not None and revoked.status == "revoked"
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise and revoked.revoked_at == NOW
    [entry] = registry.revoked_entries()
    assert (entry.serial, entry.revoked_at, entry.reason) == (
        first.serial_number,
        NOW,
        x509.ReasonFlags.key_compromise,
    )
    assert registry.revoked_entries(NOW + timedelta(days=31)) == []  # expired entries may leave the CRL


def test_the_feeds_a_gateway_reads_every_second_read_only_what_is_new(tmp_path: Path) -> None:
    # The follower asks for "valid and recorded since" and "revoked since" once a second; read through
    # the status index alone, they read every valid certificate each time (11,000 rows at 10,000
    # units). They must go by status and time together.
    registry = Registry(open_database(tmp_path / "db"))
    statements: list[str] = []
    registry.conn.set_trace_callback(statements.append)
    registry.valid_fingerprints(recorded_since=NOW)
    registry.revoked_since(NOW)
    registry.conn.set_trace_callback(None)
    plans = {
        sql: " ".join(str(row[-1]) for row in registry.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        for sql in statements
        if sql.startswith("SELECT")
    }
    assert len(plans) == 2, statements
    for index in ("pki_certificates_by_status_record", "pki_certificates_by_status_revocation"):
        assert any(f"USING INDEX {index} (status=? AND" in plan for plan in plans.values()), plans


def test_remove_identity_keeps_certificate_history(
    registry: Registry, ca: CertificateAuthority, key: PrivateKey
) -> None:
    registry.add_identity("unit", "TRK-1", NOW)
    registry.add_token(token())
    cert = ca.issue(make_csr(key), UNIT, NOW, timedelta(days=30))
    registry.add_certificate(cert, UNIT, NOW)
    with pytest.raises(StoreError) as info:
        registry.remove_identity("unit", "TRK-1")
    assert info.value.reason == "has_active_certificates"
    registry.remove_identity("unit", "TRK-1", now=NOW + timedelta(days=31))  # expired ones do not count
    assert registry.get_identity("unit", "TRK-1") is None
    assert registry.get_token(hash_token("s3cret")) is None  # tokens go with the identity
    assert registry.get_certificate(cert.serial_number) is not None  # history stays
    with pytest.raises(NotFoundError):
        registry.remove_identity("unit", "TRK-1")


def test_remove_identity_with_force(registry: Registry, ca: CertificateAuthority, key: PrivateKey) -> None:
    registry.add_identity("unit", "TRK-1", NOW)
    registry.add_certificate(ca.issue(make_csr(key), UNIT, NOW, timedelta(days=30)), UNIT, NOW)
    registry.remove_identity("unit", "TRK-1", force=True)
    assert registry.get_identity("unit", "TRK-1") is None


def test_crl_numbers_always_increase(registry: Registry) -> None:
    first = registry.next_crl_number(NOW)
    assert first == int(NOW.timestamp())
    second = registry.next_crl_number(NOW)
    third = registry.next_crl_number(NOW - timedelta(days=1))  # clock stepped back
    fourth = registry.next_crl_number(NOW + timedelta(hours=1))
    assert first < second < third < fourth
    assert fourth == int((NOW + timedelta(hours=1)).timestamp())


def test_writes_are_durable_before_return(target: str) -> None:
    writer = Registry(open_store(target))
    writer.add_identity("unit", "TRK-1", NOW)
    reader = Registry(open_store(target))
    assert reader.get_identity("unit", "TRK-1") is not None
    assert not writer.conn.in_transaction


def test_a_registry_from_before_the_lineage_migration_opens_and_migrates(
    tmp_path: Path, ca: CertificateAuthority, key: PrivateKey
) -> None:
    path = tmp_path / "old.db"
    conn = open_database(path)
    apply_migrations(conn, "pki", MIGRATIONS[:2])  # a data dir written by the previous release
    cert = ca.issue(make_csr(key), UNIT, NOW, timedelta(days=30))
    conn.execute(
        "INSERT INTO pki_certificates (serial, kind, id, not_before, not_after, status, fingerprint, pem, "
        "recorded_at) VALUES (?, 'unit', 'TRK-1', ?, ?, 'valid', ?, ?, ?)",
        (
            format(cert.serial_number, "040x"),
            cert.not_valid_before_utc.isoformat(timespec="microseconds"),
            cert.not_valid_after_utc.isoformat(timespec="microseconds"),
            cert.fingerprint(hashes.SHA256()).hex(),
            cert.public_bytes(Encoding.PEM).decode(),
            NOW.isoformat(timespec="microseconds"),
        ),
    )
    conn.close()
    registry = Registry(open_database(path))
    assert registry.schema_version == len(MIGRATIONS) == schema_version(registry.conn, "pki")
    record = registry.get_certificate(cert.serial_number)
    assert record is not None and record.renewed_from is None and record.status == "valid"
    assert registry.valid_fingerprints() == {cert.serial_number: (record.fingerprint, record.not_after)}
    assert registry.descendants(cert.serial_number) == [] and registry.ancestors(cert.serial_number) == []
