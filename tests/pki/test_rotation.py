"""Issuing CA rotation under the same root: overlap, one CRL per issuing CA, retirement, crash safety,
keys read only when something is signed, and the registry migration that records who issued what."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pki import authority as authority_module
from pki.authority import CertificateAuthority, load_root_key
from pki.errors import CAError, KeyFileError, PkiError
from pki.keys import PrivateKey, generate_private_key, load_private_key
from pki.names import make_identity
from pki.records import serial_text, to_text
from pki.service import FleetCA
from pki.sqlite import apply_migrations
from pki.store import MIGRATIONS, Registry, open_database
from pki.verify import verify_client_certificate

from .conftest import CRL_URL, NOW, TD, make_csr, openssl, write_pem

LIFETIME = timedelta(days=30)
LATER = NOW + timedelta(days=1)


def root_key(tmp_path: Path, ca: CertificateAuthority) -> PrivateKey:
    return load_root_key(tmp_path / "ca" / "root.key", ca.root)


def enroll(fleet: FleetCA, unit: str) -> x509.Certificate:
    token = fleet.register_unit(unit, NOW)
    result = fleet.enroll(unit, token, make_csr(generate_private_key(), unit), NOW, LIFETIME)
    assert result.certificate is not None, result.refusal
    return result.certificate


def renew(fleet: FleetCA, cert: x509.Certificate, unit: str) -> x509.Certificate:
    result = fleet.reenroll(cert, make_csr(generate_private_key(), unit), LATER, LIFETIME)
    assert result.certificate is not None, result.refusal
    return result.certificate


def openssl_verify(
    tmp_path: Path, leaf: x509.Certificate, *trusted: x509.Certificate, crl: Path | None = None
) -> str:
    args: list[str | Path] = ["verify", "-attime", str(int(LATER.timestamp()))]
    args += ["-CAfile", write_pem(tmp_path / "trusted.pem", *trusted)]
    if crl is not None:
        args += ["-crl_check", "-CRLfile", crl]
    result = openssl(*args, write_pem(tmp_path / "leaf.pem", leaf))
    return result.stdout + result.stderr


def test_a_rotated_issuing_ca_issues_and_the_previous_one_stays_trusted(
    fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path
) -> None:
    old = enroll(fleet, "TRK-1")
    second = fleet.rotate_issuing_ca(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    assert second.generation == 2 and fleet.authority.generation == 2
    assert second.certificate.subject.rfc4514_string() == f"CN={TD} issuing CA 2,O=fleetgate"
    assert second.certificate.public_key() != ca.issuing.public_key()  # a new key
    assert second.crl_url == f"{CRL_URL}/2"
    constraints = second.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0

    new = renew(fleet, old, "TRK-1")
    assert new.issuer == second.certificate.subject
    assert fleet.registry.get_certificate(new.serial_number).issuing_ca == 2  # type: ignore[union-attr]
    assert fleet.registry.get_certificate(old.serial_number).issuing_ca == 1  # type: ignore[union-attr]
    # both chain to the one root: the units' trust anchor does not change
    verify_client_certificate(new, ca.root, [second.certificate], LATER)
    verify_client_certificate(old, ca.root, [ca.issuing], LATER)
    assert "OK" in openssl_verify(tmp_path, new, ca.root, second.certificate)
    points = new.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value == f"{CRL_URL}/2"  # type: ignore[index]

    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert [c.generation for c in loaded.issuing_cas] == [1, 2] and loaded.issuing == second.certificate
    assert loaded.issued_by(old).generation == 1 and loaded.issued_by(new).generation == 2  # type: ignore[union-attr]
    assert loaded.trust_anchors() == [ca.root, second.certificate, ca.issuing]
    # issuing.crt shows the CA that issues; the first one's key now has its generation's name
    files = sorted(p.name for p in (tmp_path / "ca").iterdir())
    assert files == ["ca.json", "issuing-1.crt", "issuing-1.key", "issuing-2.crt", "issuing-2.key",
                     "issuing.crt", "root.crt", "root.key"]  # fmt: skip
    assert (
        x509.load_pem_x509_certificate((tmp_path / "ca" / "issuing.crt").read_bytes()) == second.certificate
    )


def test_each_issuing_ca_signs_its_own_crl_and_old_revocations_still_work(
    fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path
) -> None:
    old = enroll(fleet, "TRK-1")
    second = fleet.rotate_issuing_ca(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    new = enroll(fleet, "TRK-2")
    fleet.revoke_certificate(old.serial_number, x509.ReasonFlags.key_compromise, LATER)
    first_crl, second_crl = fleet.current_crl(LATER, 1), fleet.current_crl(LATER)
    assert first_crl.issuer == ca.issuing.subject and second_crl.issuer == second.certificate.subject
    assert first_crl.is_signature_valid(ca.issuing.public_key())  # type: ignore[arg-type]
    assert second_crl.is_signature_valid(second.certificate.public_key())  # type: ignore[arg-type]
    assert first_crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert len(list(second_crl)) == 0
    assert fleet.current_crls(LATER) == [second_crl, first_crl]
    bundle = tmp_path / "crl" / "crl.pem"
    assert x509.load_der_x509_crl((tmp_path / "crl" / "crl.der").read_bytes()) == second_crl
    # OpenSSL with the bundle: the old revoked certificate is refused, the new one passes
    trusted = (ca.root, ca.issuing, second.certificate)
    assert "certificate revoked" in openssl_verify(tmp_path, old, *trusted, crl=bundle)
    assert ": OK" in openssl_verify(tmp_path, new, *trusted, crl=bundle)


def test_a_wrong_root_key_changes_nothing(fleet: FleetCA, tmp_path: Path) -> None:
    before = sorted((tmp_path / "ca").iterdir())
    with pytest.raises(CAError) as info:
        fleet.rotate_issuing_ca(tmp_path / "ca", generate_private_key(), LATER)
    assert info.value.reason == "root_key_mismatch"
    assert sorted((tmp_path / "ca").iterdir()) == before and fleet.authority.generation == 1


def test_an_interrupted_rotation_leaves_the_old_ca_in_charge_and_can_be_run_again(
    fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise OSError("power cut")

    with monkeypatch.context() as patch:
        patch.setattr(authority_module, "_write_settings", crash)
        with pytest.raises(OSError):
            ca.rotate(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    assert (tmp_path / "ca" / "issuing-2.crt").exists()  # written, but ca.json never named it
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.generation == 1 and loaded.issuing == ca.issuing
    assert [c.generation for c in loaded.issuing_cas] == [1]
    again = loaded.rotate(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    assert CertificateAuthority.load(tmp_path / "ca").issuing == again.issuing != ca.issuing


def test_retiring_is_refused_with_the_count_while_its_certificates_are_in_use(
    fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path
) -> None:
    renewed_unit, straggler = enroll(fleet, "TRK-1"), enroll(fleet, "TRK-2")
    fleet.rotate_issuing_ca(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    renewed = renew(fleet, renewed_unit, "TRK-1")
    assert fleet.registry.issued_counts(LATER) == {
        1: {"valid": 2, "in_use": 1, "in_use_unit": 1},
        2: {"valid": 1, "in_use": 1, "in_use_unit": 1},
    }
    with pytest.raises(PkiError) as refused:
        fleet.retire_issuing_ca(tmp_path / "ca", 1, LATER)
    assert refused.value.reason == "issuing_ca_in_use"
    assert refused.value.message.startswith(
        "1 certificate(s) in use were issued by issuing CA 1 (e.g. unit/TRK-2)"
    )
    assert fleet.authority.issuing_ca(1) is not None  # nothing changed

    renew(fleet, straggler, "TRK-2")
    retired = fleet.retire_issuing_ca(tmp_path / "ca", 1, LATER)
    assert (retired.generation, retired.revoked, retired.forced_in_use) == (1, 2, 0)
    for cert in (renewed_unit, straggler):  # superseded: what was renewed from them stays valid
        record = fleet.registry.get_certificate(cert.serial_number)
        assert record is not None and record.revocation_reason is x509.ReasonFlags.superseded
    assert fleet.registry.get_certificate(renewed.serial_number).status == "valid"  # type: ignore[union-attr]
    assert (
        not (tmp_path / "ca" / "issuing-1.key").exists() and not (tmp_path / "ca" / "issuing-1.crt").exists()
    )
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert [c.generation for c in loaded.issuing_cas] == [2] and loaded.trust_anchors()[1:] == [
        loaded.issuing
    ]
    assert len(fleet.current_crls(LATER)) == 1  # the retired CA's CRL is no longer published


def test_retire_force_current_and_unknown(fleet: FleetCA, ca: CertificateAuthority, tmp_path: Path) -> None:
    enroll(fleet, "TRK-1")
    with pytest.raises(CAError) as current:
        fleet.retire_issuing_ca(tmp_path / "ca", 1, LATER)
    assert current.value.reason == "issuing_ca_current" and "fleetgate ca rotate" in current.value.message
    fleet.rotate_issuing_ca(tmp_path / "ca", root_key(tmp_path, ca), LATER)
    with pytest.raises(CAError) as unknown:
        fleet.retire_issuing_ca(tmp_path / "ca", 7, LATER)
    assert unknown.value.reason == "issuing_ca_unknown"
    forced = fleet.retire_issuing_ca(tmp_path / "ca", 1, LATER, force=True)
    assert (forced.revoked, forced.forced_in_use) == (1, 1)
    with pytest.raises(CAError):
        fleet.retire_issuing_ca(tmp_path / "ca", 1, LATER)  # already retired


def test_a_rotation_keeps_keys_encrypted_with_the_same_passphrase(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", TD, NOW, passphrase=b"correct horse")
    key = load_root_key(tmp_path / "ca" / "root.key", ca.root, b"correct horse")
    rotated = CertificateAuthority.load(tmp_path / "ca", lambda path: b"correct horse")
    rotated.rotate(tmp_path / "ca", key, LATER)  # as the current key is: the same passphrase
    for name in ("issuing-1.key", "issuing-2.key"):
        assert b"ENCRYPTED" in (tmp_path / "ca" / name).read_bytes()
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(tmp_path / "ca")
    assert info.value.reason == "passphrase_required"
    assert CertificateAuthority.load(tmp_path / "ca", b"correct horse").generation == 2


def test_keys_are_read_only_when_something_is_signed(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca", TD, NOW, passphrase=b"correct horse")
    asked: list[Path] = []

    def source(path: Path) -> bytes:
        asked.append(path)
        return b"correct horse"

    lazy = CertificateAuthority.load(tmp_path / "ca", source)
    fleet = FleetCA(lazy, Registry(open_database(tmp_path / "db")), tmp_path / "crl")
    token = fleet.register_unit("TRK-1", NOW)  # no signature: no passphrase
    assert asked == []
    fleet.enroll("TRK-1", token, make_csr(generate_private_key(), "TRK-1"), NOW, LIFETIME)
    assert asked == [tmp_path / "ca" / "issuing.key"]  # once, then kept

    def refuse(path: Path) -> bytes:
        raise KeyFileError("passphrase_required", f"{path} is encrypted; no passphrase here")

    locked = FleetCA(CertificateAuthority.load(tmp_path / "ca", refuse), fleet.registry, tmp_path / "crl")
    with pytest.raises(CAError, match="no passphrase here"):
        locked.revoke_identity("unit", "TRK-1", x509.ReasonFlags.key_compromise, NOW)
    assert fleet.registry.get_identity("unit", "TRK-1").state == "enrolled"  # type: ignore[union-attr]
    # an unencrypted key is never a question
    CertificateAuthority.create(tmp_path / "plain", TD, NOW)
    CertificateAuthority.load(tmp_path / "plain", refuse).unlock()


def test_a_registry_from_before_rotation_migrates_every_certificate_to_issuing_ca_1(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    conn = open_database(tmp_path / "old.db")
    apply_migrations(conn, "pki", MIGRATIONS[:4])
    unit = make_identity("unit", "TRK-1", TD)
    cert = ca.issue(make_csr(generate_private_key(), "TRK-1"), unit, NOW, LIFETIME)
    conn.execute(
        "INSERT INTO pki_certificates (serial, kind, id, not_before, not_after, status, fingerprint, pem, "
        "recorded_at) VALUES (?, 'unit', 'TRK-1', ?, ?, 'valid', 'ab', ?, ?)",
        (
            serial_text(cert.serial_number),
            to_text(NOW),
            to_text(NOW + LIFETIME),
            cert.public_bytes(Encoding.PEM).decode(),
            to_text(NOW),
        ),
    )
    registry = Registry(conn)
    assert registry.schema_version == len(MIGRATIONS)
    assert registry.get_certificate(cert.serial_number).issuing_ca == 1  # type: ignore[union-attr]
    assert registry.issued_counts(NOW) == {1: {"valid": 1, "in_use": 1, "in_use_unit": 1}}


def test_ca_json_without_a_generation_is_the_first_one(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    settings = json.loads((tmp_path / "ca" / "ca.json").read_text())
    del settings["issuing_generation"]  # what every data dir made before rotation existed holds
    (tmp_path / "ca" / "ca.json").write_text(json.dumps(settings))
    assert CertificateAuthority.load(tmp_path / "ca").issuing == ca.issuing
    assert load_private_key(tmp_path / "ca" / "issuing.key").public_key() == ca.issuing_key.public_key()
