"""The directory's known serials, against a real registry: what MQTT admission asks before anything
else about a chain-verified certificate (gateway/app/runtime.py check_certificate)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from gateway.stores.registry_directory import RegistryDirectory
from pki.authority import CertificateAuthority
from pki.est import build_csr
from pki.keys import generate_private_key
from pki.names import make_identity
from pki.store import Registry, open_database

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UNIT = make_identity("unit", "TRK-1", "fleet.local")


def issue(ca: CertificateAuthority, at: datetime) -> x509.Certificate:
    return ca.issue(build_csr(generate_private_key(), UNIT), UNIT, at, timedelta(days=30))


def test_known_unknown_revoked_and_late_records(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", "fleet.local", NOW - timedelta(days=90))
    gateway_side = Registry(open_database(tmp_path / "fleet.db"))
    cli_side = Registry(open_database(tmp_path / "fleet.db"))  # another process, as far as SQLite knows
    recorded_before = issue(ca, NOW)
    cli_side.add_certificate(recorded_before, UNIT, NOW)
    directory = RegistryDirectory(gateway_side, "fleet.local", NOW)
    assert directory.certificate_refusal(recorded_before) is None

    never_recorded = issue(ca, NOW)
    assert directory.certificate_refusal(never_recorded) == "unknown_certificate"

    # Recorded by a process whose clock is an hour behind: outside every refresh window, still known.
    late = issue(ca, NOW)
    cli_side.add_certificate(late, UNIT, NOW - timedelta(hours=1))
    directory.refresh(NOW + timedelta(seconds=1))
    assert directory.certificate_refusal(late) is None

    cli_side.revoke_certificate(
        late.serial_number, x509.ReasonFlags.key_compromise, NOW + timedelta(seconds=2)
    )
    changes = directory.refresh(NOW + timedelta(seconds=3))
    assert changes.revoked_serials == {late.serial_number}
    assert directory.certificate_refusal(late) == "certificate_revoked"

    # Long expired ones leave the cache, and are still recognised when asked (dates refuse them first).
    old = issue(ca, NOW - timedelta(days=40))
    cli_side.add_certificate(old, UNIT, NOW - timedelta(days=40))
    directory.note_issued(old)
    directory.refresh(NOW + timedelta(hours=2))
    assert old.serial_number not in directory._known
    assert directory.certificate_refusal(old) is None
