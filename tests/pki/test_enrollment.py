"""The pure enrollment decisions: tokens first, then the CSR."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from pki.enrollment import (
    Refusal,
    RefusalReason,
    TokenRecord,
    check_enrollment,
    check_reenrollment,
    hash_token,
    new_token,
)
from pki.keys import PrivateKey, generate_private_key
from pki.names import make_identity

from .conftest import NOW, TD, make_csr, with_broken_signature

TOKEN = "tok-" + "x" * 40
UNIT_ID = "TRK-00042"


def record(**changes: object) -> TokenRecord:
    fields: dict[str, object] = {
        "token_hash": hash_token(TOKEN),
        "unit_id": UNIT_ID,
        "created_at": NOW - timedelta(hours=1),
        "expires_at": NOW + timedelta(hours=23),
        "used_at": None,
    }
    fields.update(changes)
    return TokenRecord(**fields)  # type: ignore[arg-type]


def enroll(
    csr: x509.CertificateSigningRequest,
    *,
    token: str = TOKEN,
    unit_id: str = UNIT_ID,
    rec: TokenRecord | None = None,
    state: str | None = "registered",
) -> RefusalReason | None:
    refusal = check_enrollment(unit_id, token, rec or record(), state, csr, TD, NOW)
    return None if refusal is None else refusal.reason


def test_tokens_are_long_random_and_stored_as_sha256() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in tokens)  # >= 256 bits
    assert re.fullmatch(r"[0-9a-f]{64}", hash_token(TOKEN))
    assert hash_token(TOKEN) != hash_token(TOKEN + "x")


def test_a_good_enrollment_passes(key: PrivateKey) -> None:
    assert enroll(make_csr(key)) is None  # an empty subject is fine
    own = [x509.UniformResourceIdentifier(f"spiffe://{TD}/unit/{UNIT_ID}"), x509.DNSName(UNIT_ID)]
    assert enroll(make_csr(key, UNIT_ID, own)) is None
    assert enroll(make_csr(key), state="quarantined") is None
    assert enroll(make_csr(key), state="enrolled") is None  # re-issued token for a replaced device


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"token": "guessed"}, RefusalReason.UNKNOWN_TOKEN),
        ({"rec": record(unit_id="TRK-99999")}, RefusalReason.TOKEN_UNIT_MISMATCH),
        ({"unit_id": "TRK-99999", "state": "enrolled"}, RefusalReason.TOKEN_UNIT_MISMATCH),
        ({"state": None}, RefusalReason.UNKNOWN_UNIT),
        ({"state": "revoked"}, RefusalReason.UNIT_REVOKED),
        ({"rec": record(expires_at=NOW)}, RefusalReason.TOKEN_EXPIRED),
        ({"rec": record(used_at=NOW - timedelta(minutes=1))}, RefusalReason.TOKEN_USED),
    ],
)
def test_token_refusals(key: PrivateKey, kwargs: dict[str, object], expected: RefusalReason) -> None:
    assert enroll(make_csr(key), **kwargs) is expected  # type: ignore[arg-type]


def test_unknown_token_when_no_record(key: PrivateKey) -> None:
    assert check_enrollment(UNIT_ID, TOKEN, None, "registered", make_csr(key), TD, NOW) == Refusal(
        RefusalReason.UNKNOWN_TOKEN
    )


def test_token_problems_are_reported_before_csr_problems(key: PrivateKey) -> None:
    broken = with_broken_signature(make_csr(key, "TRK-1"))
    assert enroll(broken, token="guessed") is RefusalReason.UNKNOWN_TOKEN
    assert enroll(broken, rec=record(used_at=NOW)) is RefusalReason.TOKEN_USED
    assert enroll(broken) is RefusalReason.BAD_CSR_SIGNATURE


def test_expired_is_reported_before_used(key: PrivateKey) -> None:
    rec = record(used_at=NOW - timedelta(days=2), expires_at=NOW - timedelta(days=1))
    assert enroll(make_csr(key), rec=rec) is RefusalReason.TOKEN_EXPIRED


def test_csr_key_strength() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    refusal = check_enrollment(UNIT_ID, TOKEN, record(), "registered", make_csr(weak), TD, NOW)
    assert refusal is not None and refusal.reason is RefusalReason.WEAK_KEY
    assert "1024" in refusal.detail
    for algorithm in ("p384", "rsa2048"):
        assert enroll(make_csr(generate_private_key(algorithm))) is None


@pytest.mark.parametrize(
    ("common_name", "sans"),
    [
        ("TRK-99999", []),
        (None, [x509.UniformResourceIdentifier(f"spiffe://{TD}/unit/TRK-99999")]),
        (None, [x509.UniformResourceIdentifier(f"spiffe://{TD}/operator/{UNIT_ID}")]),
        (None, [x509.UniformResourceIdentifier(f"spiffe://evil.example/unit/{UNIT_ID}")]),
        (UNIT_ID, [x509.DNSName("gateway.fleet.local")]),
    ],
)
def test_csr_naming_someone_else_is_refused(
    key: PrivateKey, common_name: str | None, sans: list[x509.GeneralName]
) -> None:
    refusal = check_enrollment(
        UNIT_ID, TOKEN, record(), "registered", make_csr(key, common_name, sans), TD, NOW
    )
    assert refusal is not None and refusal.reason is RefusalReason.CSR_IDENTITY_MISMATCH
    assert f"spiffe://{TD}/unit/{UNIT_ID}" in refusal.detail


def test_every_refusal_reason_has_code_status_and_advice() -> None:
    codes = [reason.code for reason in RefusalReason]
    assert len(set(codes)) == len(codes)
    for reason in RefusalReason:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", reason.code)
        assert reason.http_status in (400, 401, 403)
        assert ";" in reason.message and not reason.message.endswith("."), reason  # what happened; what to do
    assert RefusalReason.TOKEN_USED.http_status == 401
    assert RefusalReason.WEAK_KEY.http_status == 400
    assert RefusalReason.UNIT_REVOKED.http_status == 403
    assert RefusalReason.TOKEN_UNIT_MISMATCH.http_status == 403  # a real token, just not for this unit


UNIT = make_identity("unit", UNIT_ID, TD)


def renew(csr: x509.CertificateSigningRequest, **kwargs: object) -> RefusalReason | None:
    args: dict[str, object] = {"current_cert_revoked": False, "unit_state": "enrolled"}
    args.update(kwargs)
    refusal = check_reenrollment(UNIT, csr=csr, trust_domain=TD, now=NOW, **args)  # type: ignore[arg-type]
    return None if refusal is None else refusal.reason


def test_reenrollment_decisions(key: PrivateKey) -> None:
    csr = make_csr(key, UNIT_ID)
    assert renew(csr) is None
    assert renew(csr, unit_state="quarantined") is None
    assert renew(csr, current_cert_revoked=True) is RefusalReason.CERTIFICATE_REVOKED
    assert renew(csr, unit_state="revoked") is RefusalReason.UNIT_REVOKED
    assert renew(csr, unit_state=None) is RefusalReason.UNKNOWN_UNIT
    assert renew(csr, not_after=NOW - timedelta(seconds=1)) is RefusalReason.CERTIFICATE_EXPIRED
    assert renew(make_csr(key, "TRK-1")) is RefusalReason.IDENTITY_MISMATCH
    assert renew(with_broken_signature(csr)) is RefusalReason.BAD_CSR_SIGNATURE
