"""Two writers on one PostgreSQL, as two nodes are: each on its own connection, enrolling units
(certificates recorded with the registry) and appending audit records at the same time. No serial
twice, no record lost, one chain that verifies."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from gateway.stores.audit_log import AuditLog
from pki.authority import CertificateAuthority
from pki.keys import generate_private_key
from pki.names import make_identity
from pki.sqlite import open_store
from pki.store import Registry
from tests.pki.conftest import make_csr

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PER_NODE = 1500  # audit records per writer; every third one goes with an enrolled certificate


def test_two_writers_never_fork_the_chain_nor_repeat_a_serial(pg_url: str, tmp_path: object) -> None:
    from pathlib import Path

    ca = CertificateAuthority.create(Path(str(tmp_path)) / "ca", "fleet.local", NOW)
    Registry(open_store(pg_url))  # migrated once up front, as the first node does
    AuditLog(open_store(pg_url))
    key = generate_private_key("p256")
    csr = make_csr(key)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def node(name: str) -> None:
        try:
            conn = open_store(pg_url)
            registry, log = Registry(conn), AuditLog(conn, node=name)
            barrier.wait()
            for i in range(PER_NODE):
                if i % 3 == 0:
                    unit = f"TRK-{name}-{i}"
                    identity = make_identity("unit", unit, "fleet.local")
                    registry.add_identity("unit", unit, NOW)
                    cert = ca.issue(csr, identity, NOW, timedelta(days=30))
                    registry.add_certificate(cert, identity, NOW)
                log.append(actor=f"system/{name}", action="test.append", subject=str(i), outcome="ok",
                           now=NOW)
        except BaseException as exc:  # reported below, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    conn = open_store(pg_url)
    serials = [row[0] for row in conn.execute("SELECT serial FROM pki_certificates").fetchall()]
    assert len(serials) == len(set(serials)) == 2 * len(range(0, PER_NODE, 3))
    result = AuditLog(conn).verify()
    assert result.ok, result
    assert result.checked == 2 * PER_NODE
    by_node = conn.execute(
        "SELECT actor, count(*) FROM audit_log GROUP BY actor ORDER BY actor"
    ).fetchall()
    assert [tuple(row) for row in by_node] == [("system/a", PER_NODE), ("system/b", PER_NODE)]
