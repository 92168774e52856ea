"""The console's incremental chain check: a slice per page view, and it finds what the full walk finds
in the records it has not yet checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.admin.console_chain import ChainCheck
from gateway.stores.audit_log import AuditLog
from pki.sqlite import open_database
from tests.gateway.test_audit import tamper

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def filled(path: Path, n: int) -> AuditLog:
    log = AuditLog(open_database(path))
    for i in range(1, n + 1):
        log.append(actor="operator/a", action="unit.add", subject=f"unit/T-{i}", outcome="ok", reason="",
                   details={"n": i}, now=T0 + timedelta(seconds=i))  # fmt: skip
    return log


def test_it_checks_a_slice_per_view_until_it_reaches_the_head(tmp_path: Path) -> None:
    log = filled(tmp_path / "db", 25)
    check = ChainCheck()
    assert check.step(log, limit=10) == (True, 10, 25)
    assert check.step(log, limit=10) == (True, 20, 25)
    assert check.step(log, limit=10) == (True, 25, 25)
    log.append(actor="a", action="b", subject="c", outcome="ok", reason="", details={}, now=T0)
    assert check.step(log, limit=10) == (True, 26, 26)


def test_an_edited_record_ahead_of_the_check_is_found_and_stays_found(tmp_path: Path) -> None:
    log = filled(tmp_path / "db", 12)
    check = ChainCheck()
    check.step(log, limit=5)
    tamper(log._conn, "UPDATE audit_log SET reason = 'nothing to see' WHERE seq = 8")
    assert check.step(log, limit=100) == (False, 7, 12)
    assert check.problem == "record 8 was edited"
    assert check.step(log) == (False, 7, 12)
