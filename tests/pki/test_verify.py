from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from pki.authority import CertificateAuthority, RevokedEntry
from pki.errors import VerificationError
from pki.keys import PrivateKey
from pki.names import make_identity
from pki.verify import is_revoked, verify_client_certificate, verify_crl, verify_server_certificate

from .conftest import NOW, TD, make_csr

UNIT = make_identity("unit", "TRK-7", TD)


@pytest.fixture
def leaf(ca: CertificateAuthority, key: PrivateKey) -> x509.Certificate:
    return ca.issue(make_csr(key), UNIT, NOW, timedelta(days=30))


def reason_of(
    leaf: x509.Certificate, root: x509.Certificate, chain: list[x509.Certificate], when: object
) -> str:
    with pytest.raises(VerificationError) as info:
        verify_client_certificate(leaf, root, chain, when)  # type: ignore[arg-type]
    return info.value.reason


def test_a_unit_certificate_verifies(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    verify_client_certificate(leaf, ca.root, ca.chain(), NOW)
    verify_client_certificate(leaf, ca.root, ca.chain(), NOW + timedelta(days=29))


def test_expired_and_not_yet_valid(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    with pytest.raises(VerificationError) as expired:
        verify_client_certificate(leaf, ca.root, ca.chain(), NOW + timedelta(days=31))
    assert expired.value.reason == "expired"
    assert "2025-07-01 12:00" in expired.value.message and "renew" in expired.value.message
    assert reason_of(leaf, ca.root, ca.chain(), NOW - timedelta(minutes=6)) == "not_yet_valid"


def test_certificate_of_another_fleet_is_untrusted(
    ca: CertificateAuthority, tmp_path: Path, key: PrivateKey
) -> None:
    other = CertificateAuthority.create(tmp_path / "other", TD, NOW)
    foreign = other.issue(make_csr(key), UNIT, NOW, timedelta(days=30))
    assert reason_of(foreign, ca.root, ca.chain(), NOW) == "untrusted"
    assert reason_of(foreign, ca.root, other.chain(), NOW) == "untrusted"


def test_missing_intermediate_is_untrusted(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    assert reason_of(leaf, ca.root, [], NOW) == "untrusted"


def test_server_certificate_is_not_a_client_certificate(ca: CertificateAuthority, key: PrivateKey) -> None:
    server = ca.issue_server_certificate("gw", ["localhost"], key.public_key(), NOW, timedelta(days=30))
    assert reason_of(server, ca.root, ca.chain(), NOW) == "wrong_purpose"
    verify_server_certificate(server, ca.root, ca.chain(), "localhost", NOW)
    with pytest.raises(VerificationError):
        verify_server_certificate(server, ca.root, ca.chain(), "127.0.0.1", NOW)


def test_ca_certificate_is_not_a_client_certificate(ca: CertificateAuthority) -> None:
    assert reason_of(ca.issuing, ca.root, [], NOW) == "not_end_entity"


def test_crl_checks(ca: CertificateAuthority, leaf: x509.Certificate, tmp_path: Path) -> None:
    crl = ca.build_crl([RevokedEntry(leaf.serial_number, NOW, x509.ReasonFlags.superseded)], NOW)
    verify_crl(crl, ca.issuing, NOW)
    assert is_revoked(leaf.serial_number, crl) and not is_revoked(leaf.serial_number + 1, crl)
    with pytest.raises(VerificationError) as stale:
        verify_crl(crl, ca.issuing, NOW + timedelta(days=2))
    assert stale.value.reason == "crl_stale"
    other = CertificateAuthority.create(tmp_path / "other", TD, NOW)
    with pytest.raises(VerificationError) as forged:
        verify_crl(other.build_crl([], NOW), ca.issuing, NOW)
    assert forged.value.reason == "crl_bad_signature"
