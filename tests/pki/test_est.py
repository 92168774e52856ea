"""RFC 7030 bodies: what stock clients send us, and garbage that must only ever be EstBodyError."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki.authority import CertificateAuthority
from pki.errors import EstBodyError
from pki.est import build_csr, decode_certs_only, decode_csr_body, encode_certs_only
from pki.keys import PrivateKey, generate_private_key, write_private_key
from pki.names import make_identity

from .conftest import NOW, TD, make_csr, openssl

UNIT = make_identity("unit", "TRK-00042", TD)
SAMPLE_DER = make_csr(generate_private_key(), "TRK-00042", [x509.DNSName("TRK-00042")]).public_bytes(
    Encoding.DER
)


@pytest.mark.parametrize(
    "encode",
    [
        lambda der: base64.b64encode(der),
        lambda der: base64.encodebytes(der),  # 76-column lines
        lambda der: base64.encodebytes(der).replace(b"\n", b"\r\n"),
        lambda der: base64.b64encode(der).rstrip(b"="),  # padding dropped
        lambda der: b"  \n" + base64.b64encode(der) + b"\n\n",
        lambda der: der,  # curl --data-binary @csr.der
        lambda der: x509.load_der_x509_csr(der).public_bytes(Encoding.PEM),
    ],
    ids=["b64", "lines", "crlf", "no-padding", "padded-whitespace", "raw-der", "pem"],
)
def test_accepted_csr_bodies(encode: object) -> None:
    csr = decode_csr_body(encode(SAMPLE_DER))  # type: ignore[operator]
    assert csr.public_bytes(Encoding.DER) == SAMPLE_DER


def test_csr_made_by_openssl_is_accepted(tmp_path: Path) -> None:
    key_file = tmp_path / "unit.key"
    write_private_key(key_file, generate_private_key())
    der_file = tmp_path / "unit.csr.der"
    result = openssl(
        "req", "-new", "-key", key_file, "-subj", "/CN=TRK-00042", "-outform", "DER", "-out", der_file
    )
    assert result.returncode == 0, result.stderr
    csr = decode_csr_body(base64.encodebytes(der_file.read_bytes()))
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=TRK-00042"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not_a_csr"),
        (b"   \r\n", "not_a_csr"),
        (b"this is not base64!", "not_base64"),
        (base64.b64encode(b"hello world, not DER"), "not_a_csr"),
        (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not_a_csr"),
        (base64.b64encode(SAMPLE_DER[:-10]), "not_a_csr"),
        (b"A" * (64 * 1024 + 1), "body_too_large"),
    ],
    ids=["empty", "blank", "not-base64", "not-der", "bad-pem", "truncated", "too-large"],
)
def test_refused_csr_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(EstBodyError) as info:
        decode_csr_body(body)
    assert info.value.reason == reason
    assert info.value.message


def test_size_limit_is_configurable() -> None:
    with pytest.raises(EstBodyError) as info:
        decode_csr_body(base64.b64encode(SAMPLE_DER), max_size=100)
    assert info.value.reason == "body_too_large"


def _decodes_or_refuses(body: bytes) -> None:
    try:
        csr = decode_csr_body(body)
    except EstBodyError as exc:
        assert exc.reason in ("body_too_large", "not_base64", "not_a_csr")
        return
    # Whatever parsed is fully usable by the enrollment code.
    csr.subject.rfc4514_string()
    list(csr.extensions)
    csr.public_key()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_est_body_error(body: bytes) -> None:
    _decodes_or_refuses(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1024))
def test_arbitrary_base64_only_ever_raises_est_body_error(payload: bytes) -> None:
    _decodes_or_refuses(base64.encodebytes(payload))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SAMPLE_DER) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_csrs_only_ever_raise_est_body_error(mutations: list[tuple[int, int]]) -> None:
    """Near-valid DER reaches the parser's lazily decoded parts (names, extensions, key)."""
    der = bytearray(SAMPLE_DER)
    for position, value in mutations:
        der[position] = value
    _decodes_or_refuses(base64.b64encode(bytes(der)))
    _decodes_or_refuses(bytes(der))


def test_certs_only_round_trip_and_openssl_reads_it(ca: CertificateAuthority, tmp_path: Path) -> None:
    body = encode_certs_only([ca.issuing, ca.root])
    assert all(len(line) <= 76 for line in body.splitlines())
    assert decode_certs_only(body) == [ca.issuing, ca.root]  # CA first, root last
    der = tmp_path / "certs.p7"
    der.write_bytes(base64.b64decode(body))
    result = openssl("pkcs7", "-inform", "DER", "-in", der, "-print_certs", "-noout")
    assert result.returncode == 0, result.stderr
    assert "subject=O = fleetgate, CN = fleet.local issuing CA" in result.stdout


def test_decode_certs_only_refuses_garbage() -> None:
    for body in (b"", b"@@@", base64.b64encode(b"junk")):
        with pytest.raises(EstBodyError) as info:
            decode_certs_only(body)
        assert info.value.reason == "not_certs_only"


def test_build_csr_names_the_identity_and_enrolls(ca: CertificateAuthority, key: PrivateKey) -> None:
    csr = build_csr(key, UNIT)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=TRK-00042"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [UNIT.spiffe_uri]
    body = base64.encodebytes(csr.public_bytes(Encoding.DER))
    cert = ca.issue(decode_csr_body(body), UNIT, NOW, timedelta(days=30))
    assert cert.public_key() == key.public_key()


def test_decoded_bundle_lists_the_leaf_first_and_the_root_last(
    ca: CertificateAuthority, key: PrivateKey
) -> None:
    leaf = ca.issue(build_csr(key, UNIT), UNIT, NOW, timedelta(days=30))
    for order in ([ca.root, ca.issuing, leaf], [leaf, ca.root, ca.issuing], [ca.issuing, leaf, ca.root]):
        assert decode_certs_only(encode_certs_only(order)) == [leaf, ca.issuing, ca.root]


def test_binary_der_ending_in_a_whitespace_byte_is_not_trimmed() -> None:
    """A raw DER CSR whose signature ends in 0x0a (or any whitespace byte) must parse as sent."""
    from cryptography import x509 as _x509
    from cryptography.hazmat.primitives import hashes as _hashes
    from cryptography.hazmat.primitives.asymmetric import ec as _ec
    from cryptography.hazmat.primitives.serialization import Encoding as _Encoding
    from cryptography.x509.oid import NameOID as _NameOID

    from pki.est import decode_csr_body as _decode

    name = _x509.Name([_x509.NameAttribute(_NameOID.COMMON_NAME, "TRK-1")])
    for _ in range(2000):  # ECDSA signatures are random: find one whose DER ends in whitespace
        key = _ec.generate_private_key(_ec.SECP256R1())
        der = (
            _x509.CertificateSigningRequestBuilder()
            .subject_name(name)
            .sign(key, _hashes.SHA256())
            .public_bytes(_Encoding.DER)
        )
        if der[-1:] in (b"\t", b"\n", b"\x0b", b"\x0c", b"\r", b" "):
            break
    else:  # pragma: no cover - 1 in ~40 per try; 2000 tries never all miss
        raise AssertionError("no whitespace-terminated DER found")
    assert _decode(der).public_bytes(_Encoding.DER) == der
