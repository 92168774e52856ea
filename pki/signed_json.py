"""JSON objects signed by a certificate's key, verifiable by whoever holds that certificate.

The gateway signs the mode commands it sends units (`fleet/{unit}/cmd/mode`) with its TLS server
key, and a unit checks them against the server certificate it saw in its TLS handshake, which it
has already verified against the fleet root: nothing new to distribute, and it works the same over
MQTT 3.1.1 and 5.0 because the signature rides inside the payload.

Format (docs/operations.md repeats it for firmware writers). A signed payload is one JSON object
with two extra members:

    "signer"  lower-case hex SHA-256 fingerprint of the signing certificate (its DER encoding)
    "sig"     standard base64 of the signature over the *signed bytes* with SHA-256:
              ECDSA keys: the DER-encoded (r, s) signature, made deterministically (RFC 6979);
              RSA keys: PKCS#1 v1.5

The signed bytes are the canonical JSON of the object without "sig" and "signer": members sorted
by name, no whitespace (separators "," and ":"), every non-ASCII character escaped as \\uXXXX —
what Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"))` writes. Numbers other than
integers are refused, since floats have no single canonical spelling. The payload itself is that
canonical JSON of the whole object, so it too is a pure function of the object and the key: with
deterministic ECDSA the same object signed twice is the same bytes, and a publisher that compares
bytes (gateway/ops/mode_publisher.py) does not republish after a restart.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.keys import PrivateKey, load_private_key

SIG, SIGNER = "sig", "signer"


def _deterministic_ecdsa() -> ec.ECDSA:
    return ec.ECDSA(hashes.SHA256(), deterministic_signing=True)


class SignatureError(ValueError):
    """The payload is not an object this certificate signed; `reason` says what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # malformed | unsigned | unknown_signer | bad_signature


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    _refuse_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise ValueError("signed JSON carries no floating-point numbers; send them as strings")
    if isinstance(value, Mapping):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class JsonSigner:
    key: PrivateKey
    certificate: x509.Certificate

    def __post_init__(self) -> None:
        if not isinstance(self.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("only ECDSA and RSA keys sign JSON here")
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            try:  # at start, not at the first quarantine: randomized signatures would defeat byte dedupe
                _deterministic_ecdsa()
            except UnsupportedAlgorithm:
                raise ValueError(
                    "this OpenSSL cannot make deterministic ECDSA signatures (RFC 6979 needs OpenSSL 3.2 "
                    "or newer); upgrade the cryptography package or use an RSA server key"
                ) from None
        if _spki(self.key.public_key()) != _spki(self.certificate.public_key()):
            subject = self.certificate.subject.rfc4514_string()
            raise ValueError(
                f"the private key does not belong to the certificate of {subject}; "
                "use the key it was issued for"
            )

    @classmethod
    def load(cls, key_file: Path, cert_file: Path) -> JsonSigner:
        """From a key file and a PEM file whose first certificate is the key's (a chain may follow)."""
        certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        return cls(load_private_key(key_file), certificate)

    @property
    def signer(self) -> str:
        return fingerprint(self.certificate)

    def sign(self, obj: Mapping[str, Any]) -> bytes:
        """The payload: `obj` with "sig" and "signer", as canonical JSON."""
        if SIG in obj or SIGNER in obj:
            raise ValueError(f"the object to sign already has {SIG!r} or {SIGNER!r}")
        data = canonical_json(obj)
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            signature = self.key.sign(data, _deterministic_ecdsa())
        else:
            assert isinstance(self.key, rsa.RSAPrivateKey)
            signature = self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        signed = {**obj, SIG: base64.b64encode(signature).decode("ascii"), SIGNER: self.signer}
        return canonical_json(signed)


def verify(payload: bytes, certificate: x509.Certificate) -> dict[str, Any]:
    """The object without "sig" and "signer" if `certificate`'s key signed it, else SignatureError."""
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("malformed", "the payload is not JSON") from None
    if not isinstance(obj, dict):
        raise SignatureError("malformed", "the payload is not a JSON object")
    sig, signer = obj.pop(SIG, None), obj.pop(SIGNER, None)
    if sig is None or signer is None:
        raise SignatureError("unsigned", "the payload carries no signature")
    if not isinstance(sig, str) or not isinstance(signer, str):
        raise SignatureError("malformed", "sig and signer must be strings")
    if signer != fingerprint(certificate):
        raise SignatureError("unknown_signer", f"signed by {signer[:16]}…, not by the certificate held")
    try:
        signature = base64.b64decode(sig, validate=True)
        data = canonical_json(obj)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed", "sig is not base64, or the object has no canonical form") from None
    public_key = certificate.public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureError("unknown_signer", "the certificate's key cannot sign JSON here")
    except InvalidSignature:
        raise SignatureError("bad_signature", "the signature does not verify") from None
    return obj
