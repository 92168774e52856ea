"""Two processes on one SQLite file, as the workers of `fleetgate serve --workers N` are: each appends
audit records and records certificates at the same time, and both make the cluster's backbone key on
a fresh database at once. One chain that verifies, no record lost, no serial twice, one key."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.stores.audit_log import AuditLog
from gateway.stores.backbone_key import backbone_key
from pki.authority import CertificateAuthority
from pki.keys import generate_private_key
from pki.names import make_identity
from pki.sqlite import open_store
from pki.store import Registry
from tests.pki.conftest import make_csr

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PER_PROCESS = 300  # audit records per process; every third one goes with a recorded certificate


def _writer(database: str, ca_dir: str, name: str, start: object, out: object) -> None:
    """In its own process: the key first (both at once on a fresh file), then the appends."""
    conn = open_store(database)
    start.wait()  # type: ignore[attr-defined]
    key = backbone_key(conn)
    registry, log = Registry(conn), AuditLog(conn, node=name)
    ca = CertificateAuthority.load(Path(ca_dir), lambda _path: b"")
    csr = make_csr(generate_private_key("p256"))
    for i in range(PER_PROCESS):
        if i % 3 == 0:
            unit = f"TRK-{name}-{i}"
            identity = make_identity("unit", unit, "fleet.local")
            registry.add_identity("unit", unit, NOW)
            registry.add_certificate(ca.issue(csr, identity, NOW, timedelta(days=30)), identity, NOW)
        log.append(actor=f"system/{name}", action="test.append", subject=str(i), outcome="ok", now=NOW)
    conn.close()
    out.put((name, key.hex()))  # type: ignore[attr-defined]


def test_two_processes_on_one_sqlite_file_share_one_chain_one_key_and_never_repeat_a_serial(
    tmp_path: Path,
) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, "fleet.local", NOW)
    database = str(tmp_path / "fleetgate.db")
    conn = open_store(database)  # the registry and audit schemas exist, as `fleetgate init` leaves them
    Registry(conn)
    AuditLog(conn)
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    procs = [context.Process(target=_writer, args=(database, str(ca_dir), n, start, out)) for n in "ab"]
    for proc in procs:
        proc.start()
    start.set()
    keys = dict(out.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0

    assert len(set(keys.values())) == 1  # both made "the" key at once: the first insert won, both read it
    result = AuditLog(conn).verify()
    assert result.ok, result
    assert result.checked == 2 * PER_PROCESS
    actors = conn.execute("SELECT actor, count(*) FROM audit_log GROUP BY actor ORDER BY actor").fetchall()
    assert [tuple(row) for row in actors] == [("system/a", PER_PROCESS), ("system/b", PER_PROCESS)]
    serials = [row[0] for row in conn.execute("SELECT serial FROM pki_certificates").fetchall()]
    assert len(serials) == len(set(serials)) == 2 * len(range(0, PER_PROCESS, 3))
