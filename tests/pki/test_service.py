"""FleetCA end to end: register, enroll, renew, revoke, as the CLI and EST handlers drive it."""

from __future__ import annotations

import ssl
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pki.authority import CertificateAuthority
from pki.enrollment import RefusalReason
from pki.errors import AlreadyExistsError, CSRError, PkiError, StoreError, WeakKeyError
from pki.keys import PrivateKey, generate_private_key
from pki.names import identity_from_certificate, make_identity
from pki.service import EnrollmentResult, FleetCA
from pki.store import Registry, open_database
from pki.verify import verify_client_certificate

from .conftest import NOW, TD, make_csr, openssl, with_broken_signature, write_pem

LIFETIME = timedelta(days=30)
UNIT_ID = "TRK-00042"


def enrolled(result: EnrollmentResult) -> x509.Certificate:
    assert result.refusal is None, result.refusal
    assert result.certificate is not None
    return result.certificate


def refused(result: EnrollmentResult) -> RefusalReason:
    assert result.certificate is None
    assert result.refusal is not None
    return result.refusal.reason


def state(fleet: FleetCA, unit_id: str = UNIT_ID) -> str | None:
    record = fleet.registry.get_identity("unit", unit_id)
    return None if record is None else record.state


@pytest.fixture
def unit_cert(fleet: FleetCA, key: PrivateKey) -> x509.Certificate:
    token = fleet.register_unit(UNIT_ID, NOW)
    return enrolled(fleet.enroll(UNIT_ID, token, make_csr(key, UNIT_ID), NOW, LIFETIME))


def test_register_and_enroll_gives_a_certificate_openssl_accepts(
    fleet: FleetCA, ca: CertificateAuthority, key: PrivateKey, tmp_path: Path
) -> None:
    token = fleet.register_unit(UNIT_ID, NOW, metadata={"plate": "AB-123"})
    assert state(fleet) == "registered"
    assert fleet.registry.get_token(token) is None  # only the hash is stored
    cert = enrolled(fleet.enroll(UNIT_ID, token, make_csr(key), NOW, LIFETIME))
    assert identity_from_certificate(cert, TD) == make_identity("unit", UNIT_ID, TD)
    assert cert.public_key() == key.public_key()
    assert state(fleet) == "enrolled"
    assert fleet.registry.latest_certificate("unit", UNIT_ID).serial == cert.serial_number  # type: ignore[union-attr]
    verify_client_certificate(cert, ca.root, ca.chain(), NOW)
    result = openssl(
        "verify",
        "-attime",
        str(int(NOW.timestamp())),
        "-CAfile",
        write_pem(tmp_path / "root.crt", ca.root),
        "-untrusted",
        write_pem(tmp_path / "issuing.crt", ca.issuing),
        write_pem(tmp_path / "unit.crt", cert),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_token_works_exactly_once(fleet: FleetCA, key: PrivateKey) -> None:
    token = fleet.register_unit(UNIT_ID, NOW)
    enrolled(fleet.enroll(UNIT_ID, token, make_csr(key), NOW, LIFETIME))
    again = fleet.enroll(
        UNIT_ID, token, make_csr(generate_private_key()), NOW + timedelta(minutes=1), LIFETIME
    )
    assert refused(again) is RefusalReason.TOKEN_USED
    assert len(fleet.registry.list_certificates("unit", UNIT_ID)) == 1


def test_concurrent_enrollments_with_one_token_issue_one_certificate(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    path = tmp_path / "shared.db"
    token = FleetCA(ca, Registry(open_database(path)), tmp_path / "crl").register_unit(UNIT_ID, NOW)
    services = [FleetCA(ca, Registry(open_database(path)), tmp_path / "crl") for _ in range(6)]
    barrier = threading.Barrier(len(services))
    results: list[EnrollmentResult] = []

    def race(service: FleetCA) -> None:
        barrier.wait()
        results.append(service.enroll(UNIT_ID, token, make_csr(generate_private_key()), NOW, LIFETIME))

    threads = [threading.Thread(target=race, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.ok for r in results) == 1
    assert {r.refusal.reason for r in results if r.refusal} == {RefusalReason.TOKEN_USED}
    assert len(services[0].registry.list_certificates("unit", UNIT_ID)) == 1


def test_token_refusals_change_nothing(fleet: FleetCA, key: PrivateKey) -> None:
    token = fleet.register_unit(UNIT_ID, NOW, token_ttl=timedelta(hours=1))
    other_token = fleet.register_unit("TRK-00043", NOW)
    csr = make_csr(key)
    assert refused(fleet.enroll(UNIT_ID, "not-a-token", csr, NOW, LIFETIME)) is RefusalReason.UNKNOWN_TOKEN
    assert (
        refused(fleet.enroll(UNIT_ID, other_token, csr, NOW, LIFETIME)) is RefusalReason.TOKEN_UNIT_MISMATCH
    )
    late = NOW + timedelta(hours=1)
    assert refused(fleet.enroll(UNIT_ID, token, csr, late, LIFETIME)) is RefusalReason.TOKEN_EXPIRED
    assert refused(fleet.enroll(UNIT_ID, token, make_csr(key, "TRK-00043"), NOW, LIFETIME)) is (
        RefusalReason.CSR_IDENTITY_MISMATCH
    )
    assert refused(fleet.enroll(UNIT_ID, token, with_broken_signature(csr), NOW, LIFETIME)) is (
        RefusalReason.BAD_CSR_SIGNATURE
    )
    assert fleet.registry.list_certificates() == []
    assert state(fleet) == "registered"
    # After all those refusals the token is still unused and still works.
    enrolled(fleet.enroll(UNIT_ID, token, csr, NOW, LIFETIME))


def test_register_twice(fleet: FleetCA, key: PrivateKey) -> None:
    lost = fleet.register_unit(UNIT_ID, NOW)
    with pytest.raises(AlreadyExistsError) as info:
        fleet.register_unit(UNIT_ID, NOW)  # a retried script must not silently replace the token
    assert info.value.reason == "already_exists"
    fresh = fleet.register_unit(UNIT_ID, NOW + timedelta(minutes=1), reissue=True)  # first token lost
    at = NOW + timedelta(minutes=2)
    assert refused(fleet.enroll(UNIT_ID, lost, make_csr(key), at, LIFETIME)) is RefusalReason.TOKEN_EXPIRED
    enrolled(fleet.enroll(UNIT_ID, fresh, make_csr(key), at, LIFETIME))
    with pytest.raises(AlreadyExistsError):
        fleet.register_unit(UNIT_ID, NOW, reissue=True)  # enrolled units are not re-registered
    replacement = fleet.new_token(UNIT_ID, NOW)  # a replaced device may enroll again
    enrolled(fleet.enroll(UNIT_ID, replacement, make_csr(generate_private_key()), NOW, LIFETIME))
    assert state(fleet) == "enrolled"


def test_revoked_unit_can_neither_enroll_nor_renew(
    fleet: FleetCA, unit_cert: x509.Certificate, key: PrivateKey
) -> None:
    spare = fleet.new_token(UNIT_ID, NOW)
    serials = fleet.revoke_identity("unit", UNIT_ID, x509.ReasonFlags.key_compromise, NOW)
    assert serials == [unit_cert.serial_number]
    assert state(fleet) == "revoked"
    assert refused(fleet.enroll(UNIT_ID, spare, make_csr(key), NOW, LIFETIME)) is RefusalReason.UNIT_REVOKED
    assert (
        refused(fleet.reenroll(unit_cert, make_csr(key), NOW, LIFETIME)) is RefusalReason.CERTIFICATE_REVOKED
    )
    with pytest.raises(PkiError) as info:
        fleet.new_token(UNIT_ID, NOW)
    assert info.value.reason == "identity_revoked"


def test_quarantined_unit_may_renew_and_stays_quarantined(
    fleet: FleetCA, unit_cert: x509.Certificate, ca: CertificateAuthority
) -> None:
    fleet.registry.set_state("unit", UNIT_ID, "quarantined", NOW)
    new_key = generate_private_key()
    later = NOW + timedelta(days=20)
    renewed = enrolled(fleet.reenroll(unit_cert, make_csr(new_key, UNIT_ID), later, LIFETIME))
    assert state(fleet) == "quarantined"
    assert renewed.public_key() == new_key.public_key()
    assert renewed.not_valid_after_utc == later + LIFETIME
    verify_client_certificate(renewed, ca.root, ca.chain(), later)
    verify_client_certificate(unit_cert, ca.root, ca.chain(), later)  # the old one still works
    assert not fleet.registry.is_revoked(unit_cert.serial_number)
    assert [c.serial for c in fleet.registry.list_certificates("unit", UNIT_ID)] == [
        unit_cert.serial_number,
        renewed.serial_number,
    ]


def test_quarantined_unit_enrolling_with_a_token_stays_quarantined(fleet: FleetCA, key: PrivateKey) -> None:
    token = fleet.register_unit(UNIT_ID, NOW)
    fleet.registry.set_state("unit", UNIT_ID, "quarantined", NOW)
    enrolled(fleet.enroll(UNIT_ID, token, make_csr(key), NOW, LIFETIME))
    assert state(fleet) == "quarantined"


def test_renewal_refusals(
    fleet: FleetCA, unit_cert: x509.Certificate, key: PrivateKey, tmp_path: Path
) -> None:
    other_unit = make_csr(key, "TRK-99999")
    assert refused(fleet.reenroll(unit_cert, other_unit, NOW, LIFETIME)) is RefusalReason.IDENTITY_MISMATCH
    expired_at = unit_cert.not_valid_after_utc + timedelta(seconds=1)
    assert (
        refused(fleet.reenroll(unit_cert, make_csr(key), expired_at, LIFETIME))
        is RefusalReason.CERTIFICATE_EXPIRED
    )
    stranger_ca = CertificateAuthority.create(tmp_path / "stranger", TD, NOW)
    forged = stranger_ca.issue(make_csr(key), make_identity("unit", UNIT_ID, TD), NOW, LIFETIME)
    assert refused(fleet.reenroll(forged, make_csr(key), NOW, LIFETIME)) is RefusalReason.UNKNOWN_CERTIFICATE
    assert len(fleet.registry.list_certificates()) == 1


def test_revocation_reaches_the_crl_files(
    fleet: FleetCA, unit_cert: x509.Certificate, ca: CertificateAuthority, tmp_path: Path
) -> None:
    assert fleet.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.key_compromise, NOW).changed
    assert not fleet.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.key_compromise, NOW).changed
    crl = x509.load_der_x509_crl((tmp_path / "crl" / "crl.der").read_bytes())
    assert crl == x509.load_pem_x509_crl((tmp_path / "crl" / "crl.pem").read_bytes())
    assert crl.is_signature_valid(ca.issuing.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(unit_cert.serial_number)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        is x509.ReasonFlags.key_compromise
    )
    issuing = write_pem(tmp_path / "issuing.crt", ca.issuing)
    checked = openssl("crl", "-noout", "-verify", "-CAfile", issuing, "-in", tmp_path / "crl" / "crl.pem")
    assert checked.returncode == 0 and "verify OK" in checked.stderr
    # What a relying party sees: openssl with CRL checking refuses the certificate as revoked.
    verdict = openssl(
        "verify",
        "-attime",
        str(int(NOW.timestamp())),
        "-crl_check",
        "-CAfile",
        write_pem(tmp_path / "root.crt", ca.root),
        "-untrusted",
        issuing,
        "-CRLfile",
        tmp_path / "crl" / "crl.pem",
        write_pem(tmp_path / "unit.crt", unit_cert),
    )
    assert verdict.returncode != 0 and "certificate revoked" in verdict.stdout + verdict.stderr


def test_current_crl_is_cached_and_refreshed(
    fleet: FleetCA, unit_cert: x509.Certificate, ca: CertificateAuthority, tmp_path: Path
) -> None:
    first = fleet.current_crl(NOW)
    assert fleet.current_crl(NOW + timedelta(hours=11)) is first
    refreshed = fleet.current_crl(NOW + timedelta(hours=12))  # half of its one-day validity
    assert refreshed is not first and refreshed.last_update_utc == NOW + timedelta(hours=12)
    # Another process (the CLI) revokes through its own FleetCA on the same database.
    cli = FleetCA(ca, Registry(fleet.registry.conn), tmp_path / "crl")
    cli.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.superseded, NOW + timedelta(hours=13))
    served = fleet.current_crl(NOW + timedelta(hours=13))
    assert served.get_revoked_certificate_by_serial_number(unit_cert.serial_number) is not None
    numbers = [
        c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        for c in (first, refreshed, served)
    ]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3


def test_remove_identity(fleet: FleetCA, unit_cert: x509.Certificate, tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        fleet.remove_identity("unit", UNIT_ID, NOW)
    assert info.value.reason == "has_active_certificates"
    assert fleet.remove_identity("unit", UNIT_ID, NOW, force=True) == [unit_cert.serial_number]
    assert state(fleet) is None
    crl = x509.load_der_x509_crl((tmp_path / "crl" / "crl.der").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(unit_cert.serial_number) is not None


def test_no_issuance_path_creates_an_id_of_two_kinds(fleet: FleetCA, key: PrivateKey) -> None:
    fleet.register_unit("TRK-1", NOW)
    for kind in ("partner", "operator", "service"):
        with pytest.raises(AlreadyExistsError) as info:
            fleet.issue_identity(kind, "TRK-1", make_csr(key, "TRK-1"), NOW, LIFETIME)
        assert info.value.reason == "id_taken"
    fleet.issue_identity("partner", "ACME", make_csr(key, "ACME"), NOW, LIFETIME, {"tier": "1"})
    with pytest.raises(AlreadyExistsError) as info:
        fleet.register_unit("ACME", NOW)  # no unit, so no token and nothing to enroll over EST
    assert info.value.reason == "id_taken"
    assert fleet.registry.get_identity("unit", "ACME") is None
    assert [c.id for c in fleet.registry.list_certificates()] == ["ACME"]


def test_issue_identity_for_operators_services_partners(fleet: FleetCA, key: PrivateKey) -> None:
    cert = fleet.issue_identity("partner", "acme", make_csr(key, "acme"), NOW, LIFETIME, {"tier": "2"})
    assert identity_from_certificate(cert, TD) == make_identity("partner", "acme", TD)
    record = fleet.registry.get_identity("partner", "acme")
    assert record is not None and record.state == "enrolled" and record.metadata == {"tier": "2"}
    with pytest.raises(PkiError) as unit:
        fleet.issue_identity("unit", UNIT_ID, make_csr(key), NOW, LIFETIME)
    assert unit.value.reason == "wrong_kind"
    with pytest.raises(CSRError) as mismatch:
        fleet.issue_identity("operator", "alice", make_csr(key, "mallory"), NOW, LIFETIME)
    assert mismatch.value.reason == "csr_identity_mismatch"
    with pytest.raises(WeakKeyError):
        fleet.issue_identity("service", "dispatch", make_csr(_rsa_1024()), NOW, LIFETIME)
    fleet.revoke_identity("partner", "acme", x509.ReasonFlags.affiliation_changed, NOW)
    with pytest.raises(PkiError) as revoked:
        fleet.issue_identity("partner", "acme", make_csr(key), NOW, LIFETIME)
    assert revoked.value.reason == "identity_revoked"


def _rsa_1024() -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def test_server_certificate_files_load_into_tls(
    fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path
) -> None:
    server_dir = tmp_path / "server"
    cert = fleet.issue_server_certificate(
        "gw1", ["localhost", "127.0.0.1"], server_dir, NOW, timedelta(days=90)
    )
    assert stat.S_IMODE((server_dir / "server.key").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((server_dir / "server.crt").read_bytes())
    assert chain == [cert, ca.issuing]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_dir / "server.crt", server_dir / "server.key")  # key matches cert
    assert fleet.registry.list_certificates() == []  # listings show client identities only


def test_server_certificate_can_be_recorded_and_revoked(fleet: FleetCA, tmp_path: Path) -> None:
    cert = fleet.issue_server_certificate("gw1", ["localhost"], tmp_path / "server", NOW, record=True)
    record = fleet.registry.get_certificate(cert.serial_number)
    assert record is not None and (record.kind, record.id) == ("gateway", "gw1")
    assert fleet.revoke_certificate(cert.serial_number, x509.ReasonFlags.superseded, NOW).changed
    assert fleet.current_crl(NOW).get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# ------------------------------------------------------------------------------ renewal lineage


def _renew(fleet: FleetCA, current: x509.Certificate, at_day: int) -> x509.Certificate:
    return enrolled(
        fleet.reenroll(
            current, make_csr(generate_private_key(), UNIT_ID), NOW + timedelta(days=at_day), LIFETIME
        )
    )


def _revoked(fleet: FleetCA, *certs: x509.Certificate) -> list[bool]:
    return [fleet.registry.is_revoked(c.serial_number) for c in certs]


def test_a_renewal_records_what_it_was_renewed_from(fleet: FleetCA, unit_cert: x509.Certificate) -> None:
    child = _renew(fleet, unit_cert, 1)
    grandchild = _renew(fleet, child, 2)
    record = fleet.registry.get_certificate(grandchild.serial_number)
    assert record is not None and record.renewed_from == child.serial_number
    first = fleet.registry.get_certificate(unit_cert.serial_number)
    assert first is not None and first.renewed_from is None  # enrolled with a token: a lineage starts
    assert [c.serial for c in fleet.registry.ancestors(grandchild.serial_number)] == [
        unit_cert.serial_number,
        child.serial_number,
    ]
    assert sorted(fleet.registry.descendants(unit_cert.serial_number)) == sorted(
        [child.serial_number, grandchild.serial_number]
    )


def test_key_compromise_revokes_every_certificate_renewed_from_it_in_one_go(
    fleet: FleetCA, unit_cert: x509.Certificate, ca: CertificateAuthority, tmp_path: Path
) -> None:
    # The thief renews twice from the stolen certificate; the owner renews once too: a fork.
    thief = _renew(fleet, unit_cert, 1)
    thief_again = _renew(fleet, thief, 2)
    owner = _renew(fleet, unit_cert, 3)
    other_unit_token = fleet.register_unit("TRK-00043", NOW)
    bystander = enrolled(
        fleet.enroll("TRK-00043", other_unit_token, make_csr(generate_private_key()), NOW, LIFETIME)
    )
    revocation = fleet.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.key_compromise, NOW)
    assert revocation.changed
    assert sorted(revocation.descendants) == sorted(
        [thief.serial_number, thief_again.serial_number, owner.serial_number]
    )
    assert _revoked(fleet, unit_cert, thief, thief_again, owner, bystander) == [True] * 4 + [False]
    crl = x509.load_der_x509_crl((tmp_path / "crl" / "crl.der").read_bytes())
    for cert in (unit_cert, thief, thief_again, owner):
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        assert entry is not None
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise
        )
    # And the revoked lineage cannot renew itself back into a valid certificate.
    assert refused(fleet.reenroll(thief_again, make_csr(generate_private_key()), NOW, LIFETIME)) is (
        RefusalReason.CERTIFICATE_REVOKED
    )


def test_superseded_revokes_only_the_predecessor(fleet: FleetCA, unit_cert: x509.Certificate) -> None:
    successor = _renew(fleet, unit_cert, 1)
    revocation = fleet.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.superseded, NOW)
    assert revocation.changed and revocation.descendants == ()
    assert _revoked(fleet, unit_cert, successor) == [True, False]
    # Found compromised later: revoking it again reaches the successor, though it was revoked before.
    again = fleet.revoke_certificate(unit_cert.serial_number, x509.ReasonFlags.key_compromise, NOW)
    assert not again.changed and again.descendants == (successor.serial_number,)
    assert _revoked(fleet, unit_cert, successor) == [True, True]


def test_revoking_a_renewal_leaves_what_it_was_renewed_from(
    fleet: FleetCA, unit_cert: x509.Certificate
) -> None:
    child = _renew(fleet, unit_cert, 1)
    grandchild = _renew(fleet, child, 2)
    revocation = fleet.revoke_certificate(child.serial_number, x509.ReasonFlags.key_compromise, NOW)
    assert revocation.serials == (child.serial_number, grandchild.serial_number)
    assert _revoked(fleet, unit_cert, child, grandchild) == [False, True, True]


# ---------------------------------------------------------------------- self-renewal of role kinds


@pytest.mark.parametrize("kind", ["operator", "service", "partner"])
def test_role_identities_do_not_renew_themselves_by_default(
    fleet: FleetCA, key: PrivateKey, kind: str
) -> None:
    issued = fleet.issue_identity(kind, "bob", make_csr(key, "bob"), NOW, timedelta(days=365))
    result = fleet.reenroll(
        issued, make_csr(generate_private_key(), "bob"), NOW + timedelta(days=1), LIFETIME
    )
    assert refused(result) is RefusalReason.SELF_RENEWAL_REFUSED
    assert result.refusal is not None and f"fleetgate {kind} add bob" in result.refusal.detail
    assert len(fleet.registry.list_certificates(kind, "bob")) == 1  # nothing issued
    # "bounded" for another kind changes nothing for this one
    others = {k: "bounded" for k in ("operator", "service", "partner") if k != kind}
    again = fleet.reenroll(issued, make_csr(generate_private_key()), NOW, LIFETIME, self_renewal=others)
    assert refused(again) is RefusalReason.SELF_RENEWAL_REFUSED


def test_bounded_self_renewal_never_outlives_what_an_operator_issued(fleet: FleetCA, key: PrivateKey) -> None:
    bounded = {"service": "bounded"}
    issued = fleet.issue_identity("service", "dispatch", make_csr(key, "dispatch"), NOW, timedelta(days=45))
    end = issued.not_valid_after_utc
    first = enrolled(
        fleet.reenroll(
            issued, make_csr(generate_private_key()), NOW + timedelta(days=1), LIFETIME, self_renewal=bounded
        )
    )
    assert first.not_valid_after_utc == NOW + timedelta(days=1) + LIFETIME  # inside the bound: as asked
    second = enrolled(
        fleet.reenroll(
            first, make_csr(generate_private_key()), NOW + timedelta(days=30), LIFETIME, self_renewal=bounded
        )
    )
    assert second.not_valid_after_utc == end  # cut at the issued certificate's expiry, not 30 days on
    third = enrolled(
        fleet.reenroll(
            second, make_csr(generate_private_key()), end - timedelta(hours=1), LIFETIME, self_renewal=bounded
        )
    )
    assert third.not_valid_after_utc == end
    record = fleet.registry.get_certificate(third.serial_number)
    assert record is not None and record.renewed_from == second.serial_number
    late = fleet.reenroll(
        third, make_csr(generate_private_key()), end + timedelta(seconds=1), LIFETIME, self_renewal=bounded
    )
    assert refused(late) is RefusalReason.CERTIFICATE_EXPIRED


def test_units_renew_whatever_the_role_settings_say(fleet: FleetCA, unit_cert: x509.Certificate) -> None:
    later = NOW + timedelta(days=20)
    renewed = enrolled(fleet.reenroll(unit_cert, make_csr(generate_private_key()), later, LIFETIME))
    assert renewed.not_valid_after_utc == later + LIFETIME  # beyond the first certificate: units roll on
