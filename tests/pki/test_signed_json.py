"""Signed JSON: what the gateway's mode commands carry, checked the way a unit checks them."""

from __future__ import annotations

import base64
import json

import pytest

from pki.signed_json import JsonSigner, SignatureError, canonical_json, verify
from tests.signing import make_signer

BODY = {"mode": "diagnostic-only", "unit": "TRK-1", "reason": "tamper — alarm", "allowed": ["a/#", "b"]}


@pytest.mark.parametrize("algorithm", ["p256", "p384", "rsa2048"])
def test_a_signed_object_verifies_and_signing_again_gives_the_same_bytes(algorithm: str) -> None:
    signer = make_signer(algorithm=algorithm)
    payload = signer.sign(BODY)
    assert verify(payload, signer.certificate) == BODY
    assert JsonSigner(signer.key, signer.certificate).sign(BODY) == payload  # deterministic
    assert payload == canonical_json(json.loads(payload))  # the payload is canonical itself
    assert payload.isascii()


def reencode(payload: bytes, **changes: object) -> bytes:
    obj = json.loads(payload)
    obj.update(changes)
    return json.dumps(obj).encode()


def test_whatever_is_wrong_with_it_is_named() -> None:
    signer, stranger = make_signer(), make_signer("stranger")
    genuine = signer.sign(BODY)
    cases = {
        "bad_signature": [
            reencode(genuine, mode="normal"),  # a member changed
            reencode(genuine, extra="added"),  # a member added
            reencode(stranger.sign(BODY), signer=json.loads(genuine)["signer"]),  # another key, our name
        ],
        "unknown_signer": [stranger.sign(BODY)],
        "unsigned": [json.dumps(BODY).encode(), reencode(genuine, sig=None)],
        "malformed": [b"not json", b"[1, 2]", reencode(genuine, sig="***"), reencode(genuine, sig=7)],
    }
    for reason, payloads in cases.items():
        for payload in payloads:
            with pytest.raises(SignatureError) as caught:
                verify(payload, signer.certificate)
            assert caught.value.reason == reason, payload
    # Whitespace and member order are not part of what is signed: the canonical form is.
    relaxed = json.dumps(dict(reversed(list(json.loads(genuine).items()))), indent=2).encode()
    assert verify(relaxed, signer.certificate) == BODY
    assert base64.b64decode(json.loads(genuine)["sig"])[0] == 0x30  # a DER SEQUENCE (r, s)


def test_floats_are_refused_and_the_key_must_match_the_certificate() -> None:
    signer, other = make_signer(), make_signer()
    with pytest.raises(ValueError, match="floating-point"):
        signer.sign({"ts": 1.5})
    with pytest.raises(ValueError, match="does not belong"):
        JsonSigner(other.key, signer.certificate)
    with pytest.raises(ValueError, match="already has"):
        signer.sign({"sig": "x"})
