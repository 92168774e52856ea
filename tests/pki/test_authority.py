"""The CA on disk: creation, loading and the ways both can fail."""

from __future__ import annotations

import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pki.authority import CA_FILES, CertificateAuthority, RevokedEntry, parse_revocation_reason
from pki.errors import CAError, CAExistsError, PkiError
from pki.keys import generate_private_key, write_private_key

from .conftest import CRL_URL, NOW, TD, openssl, write_pem


def test_create_writes_the_ca_files_with_private_keys_0600(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca", TD, NOW, crl_url=CRL_URL)
    modes = {name: stat.S_IMODE((tmp_path / "ca" / name).stat().st_mode) for name in CA_FILES}
    assert modes["root.key"] == 0o600 and modes["issuing.key"] == 0o600
    assert stat.S_IMODE((tmp_path / "ca").stat().st_mode) == 0o700
    settings = json.loads((tmp_path / "ca" / "ca.json").read_text())
    assert settings["trust_domain"] == TD and settings["crl_url"] == CRL_URL


def test_create_refuses_to_overwrite_an_existing_ca(tmp_path: Path) -> None:
    first = CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    with pytest.raises(CAExistsError) as info:
        CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    assert info.value.reason == "ca_exists"
    assert str(info.value) == f"a CA already exists in {tmp_path / 'ca'}; refusing to overwrite it"
    assert CertificateAuthority.load(tmp_path / "ca").root == first.root  # untouched


def test_create_refuses_when_any_single_ca_file_exists(tmp_path: Path) -> None:
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "issuing.key").write_text("left over")
    with pytest.raises(CAExistsError):
        CertificateAuthority.create(tmp_path / "ca", TD, NOW)


def test_load_returns_the_same_ca(tmp_path: Path) -> None:
    created = CertificateAuthority.create(tmp_path / "ca", TD, NOW, passphrase=b"pw", crl_url=CRL_URL)
    loaded = CertificateAuthority.load(tmp_path / "ca", b"pw")
    assert (loaded.root, loaded.issuing, loaded.trust_domain, loaded.crl_url) == (
        created.root,
        created.issuing,
        TD,
        CRL_URL,
    )
    assert loaded.issuing_key.public_key() == created.issuing_key.public_key()


def test_load_with_wrong_passphrase_says_so(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca", TD, NOW, passphrase=b"right")
    with pytest.raises(CAError) as wrong:
        CertificateAuthority.load(tmp_path / "ca", b"wrong")
    assert wrong.value.reason == "wrong_passphrase"
    assert "check the passphrase" in wrong.value.message
    with pytest.raises(CAError) as none:
        CertificateAuthority.load(tmp_path / "ca")
    assert none.value.reason == "passphrase_required"


def test_load_missing_and_incomplete(tmp_path: Path) -> None:
    with pytest.raises(CAError) as missing:
        CertificateAuthority.load(tmp_path / "nothing")
    assert missing.value.reason == "ca_missing" and "fleetgate init" in missing.value.message
    CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    (tmp_path / "ca" / "issuing.crt").unlink()
    with pytest.raises(CAError) as incomplete:
        CertificateAuthority.load(tmp_path / "ca")
    assert incomplete.value.reason == "ca_incomplete" and "issuing.crt" in incomplete.value.message


def test_load_refuses_a_world_readable_issuing_key(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    (tmp_path / "ca" / "issuing.key").chmod(0o640)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(tmp_path / "ca")
    assert info.value.reason == "key_file_permissions"
    assert "chmod 600" in info.value.message


@pytest.mark.parametrize("damage", ["garbage_cert", "swapped_key", "bad_json"])
def test_load_detects_a_corrupt_ca(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.create(directory, TD, NOW)
    if damage == "garbage_cert":
        (directory / "root.crt").write_text("not a certificate")
    elif damage == "swapped_key":
        write_private_key(directory / "issuing.key", generate_private_key())
    else:
        (directory / "ca.json").write_text("{")
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(directory)
    assert info.value.reason == "ca_corrupt"
    assert "restore" in info.value.message


def test_issuing_ca_profile(ca: CertificateAuthority, tmp_path: Path) -> None:
    issuing = ca.issuing
    constraints = issuing.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = issuing.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    issuing.verify_directly_issued_by(ca.root)
    assert issuing.not_valid_after_utc - NOW == timedelta(days=1095)
    assert ca.root.not_valid_after_utc - NOW == timedelta(days=3652)
    assert ca.chain() == [issuing]
    text = openssl("x509", "-noout", "-text", "-in", write_pem(tmp_path / "i.pem", issuing)).stdout
    assert "CA:TRUE, pathlen:0" in text
    assert "Certificate Sign, CRL Sign" in text


def test_issuing_ca_verifies_under_root_with_openssl(ca: CertificateAuthority, tmp_path: Path) -> None:
    root = write_pem(tmp_path / "root.crt", ca.root)
    issuing = write_pem(tmp_path / "issuing.crt", ca.issuing)
    result = openssl("verify", "-CAfile", root, issuing)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("keyCompromise", x509.ReasonFlags.key_compromise),
        ("key-compromise", x509.ReasonFlags.key_compromise),
        ("superseded", x509.ReasonFlags.superseded),
        ("cessationOfOperation", x509.ReasonFlags.cessation_of_operation),
        ("affiliationChanged", x509.ReasonFlags.affiliation_changed),
        ("privilegeWithdrawn", x509.ReasonFlags.privilege_withdrawn),
        ("unspecified", x509.ReasonFlags.unspecified),
        ("caCompromise", x509.ReasonFlags.ca_compromise),
        ("certificateHold", x509.ReasonFlags.certificate_hold),
        ("aa_compromise", x509.ReasonFlags.aa_compromise),
    ],
)
def test_parse_revocation_reason(text: str, flag: x509.ReasonFlags) -> None:
    assert parse_revocation_reason(text) is flag


@pytest.mark.parametrize("text", ["stolen", "removeFromCRL", ""])
def test_unknown_revocation_reason_lists_the_choices(text: str) -> None:
    with pytest.raises(PkiError) as info:
        parse_revocation_reason(text)
    assert info.value.reason == "unknown_revocation_reason"
    assert "keyCompromise" in info.value.message and "cessationOfOperation" in info.value.message


def test_crl_lists_entries_with_reasons_and_verifies(ca: CertificateAuthority, tmp_path: Path) -> None:
    entries = [
        RevokedEntry(12345, NOW - timedelta(hours=1), x509.ReasonFlags.key_compromise),
        RevokedEntry(2**158 + 7, NOW, x509.ReasonFlags.unspecified),
    ]
    crl = ca.build_crl(entries, NOW, crl_number=42)
    assert crl.is_signature_valid(ca.issuing.public_key())  # type: ignore[arg-type]
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 42
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.issuing.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc == NOW + timedelta(days=1)
    compromised = crl.get_revoked_certificate_by_serial_number(12345)
    assert compromised is not None
    reason = compromised.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(2**158 + 7) is not None
    result = openssl(
        "crl",
        "-noout",
        "-text",
        "-verify",
        "-CAfile",
        write_pem(tmp_path / "issuing.pem", ca.issuing),
        "-in",
        write_pem(tmp_path / "crl.pem", crl),
    )
    assert result.returncode == 0 and "verify OK" in result.stderr, result.stderr
    assert "Key Compromise" in result.stdout


def test_default_crl_number_follows_the_clock(ca: CertificateAuthority) -> None:
    earlier = ca.build_crl([], NOW)
    later = ca.build_crl([], NOW + timedelta(minutes=1))
    numbers = [
        c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number for c in (earlier, later)
    ]
    assert numbers[0] < numbers[1]


def test_load_detects_a_garbage_issuing_key(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "ca", TD, NOW)
    (tmp_path / "ca" / "issuing.key").write_text("garbage")
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(tmp_path / "ca")
    assert info.value.reason == "ca_corrupt"
