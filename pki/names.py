"""Identities and how they are written into certificates.

Every certificate fleetgate issues names exactly one identity, as a URI SAN
``spiffe://<trust-domain>/<kind>/<id>``, with the CN repeating the id. The role of a client comes
from this SAN and nothing else; identity_from_certificate is the one place that reads it back.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

# Identities the gateway authorises clients as. "gateway" names the server certificate only.
CLIENT_KINDS = ("unit", "operator", "service", "partner")
ALL_KINDS = (*CLIENT_KINDS, "gateway")

# Ids go into MQTT topics (fleet/{unit}/...), so they may not contain '/', '+', '#' or '$', and they
# go into URIs and file names, so they are kept to a conservative alphabet. Both patterns are used with
# fullmatch: with `$`, re.match would also accept a trailing newline ("TRK-9\n").
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_TRUST_DOMAIN_PATTERN = re.compile(rf"{_LABEL}(\.{_LABEL})*")


class IdentityError(ValueError):
    """A name that cannot be an identity, or a certificate that does not carry one."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # stable code, e.g. "no_spiffe_san", used in audit records and metrics


# Every Identity alive in this process, by its fields: `Identity.__new__` hands out the one there is.
_IDENTITIES: weakref.WeakValueDictionary[tuple[str, str, str], Identity] = weakref.WeakValueDictionary()
_INTERNING = threading.Lock()  # two threads making the same identity at once still get one object


@dataclass(frozen=True, slots=True, weakref_slot=True, init=False)
class Identity:
    """One object per identity in a process (`__new__`), so it hashes as itself, in C.

    Identities key the policy engine's and the detectors' maps: four lookups per message, and a hash
    written in Python cost each of them a call into the interpreter (with the per-message path
    compiled, ~800 instructions each: TLS QoS 0 went from 74,651 to 71,366 per message in
    scripts/bench_fanin.py --callgrind). Equal identities are the same object,
    so equality and this hash agree; `__eq__` still compares the fields."""

    kind: str
    id: str
    trust_domain: str

    def __new__(cls, kind: str, id: str, trust_domain: str) -> Identity:
        key = (kind, id, trust_domain)
        with _INTERNING:
            identity = _IDENTITIES.get(key)
            if identity is None:
                identity = object.__new__(cls)
                object.__setattr__(identity, "kind", kind)  # set here, under the lock: never seen unset
                object.__setattr__(identity, "id", id)
                object.__setattr__(identity, "trust_domain", trust_domain)
                _IDENTITIES[key] = identity
        return identity

    __hash__ = object.__hash__  # C's identity hash: right because equal identities are one object

    def __reduce__(self) -> tuple[type[Identity], tuple[str, str, str]]:
        # Rebuilt through __new__ (in another process, or by copy): the one object there.
        return Identity, (self.kind, self.id, self.trust_domain)

    @property
    def spiffe_uri(self) -> str:
        return f"spiffe://{self.trust_domain}/{self.kind}/{self.id}"

    @property
    def common_name(self) -> str:
        return self.id

    def __str__(self) -> str:
        return f"{self.kind}/{self.id}"


def validate_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN_PATTERN.fullmatch(trust_domain) or len(trust_domain) > 253:
        raise IdentityError(
            "invalid_trust_domain",
            f"trust domain {trust_domain!r} is not a lower-case DNS name; use something like fleet.local",
        )
    return trust_domain


def validate_id(kind: str, ident: str) -> None:
    if kind not in ALL_KINDS:
        raise IdentityError("invalid_kind", f"kind {kind!r} is not one of {', '.join(ALL_KINDS)}")
    if not _ID_PATTERN.fullmatch(ident):
        raise IdentityError(
            "invalid_id",
            f"{kind} id {ident!r} is not valid; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )


def make_identity(kind: str, ident: str, trust_domain: str) -> Identity:
    validate_id(kind, ident)
    return Identity(kind, ident, validate_trust_domain(trust_domain))


def parse_spiffe_uri(uri: str, trust_domain: str) -> Identity:
    prefix = f"spiffe://{trust_domain}/"
    if not uri.startswith(prefix):
        raise IdentityError("foreign_trust_domain", f"{uri!r} is not in trust domain {trust_domain}")
    parts = uri[len(prefix) :].split("/")
    if len(parts) != 2:
        raise IdentityError("malformed_spiffe_uri", f"{uri!r} is not spiffe://{trust_domain}/<kind>/<id>")
    kind, ident = parts
    validate_id(kind, ident)
    return Identity(kind, ident, trust_domain)


def identity_from_certificate(cert: x509.Certificate, trust_domain: str) -> Identity:
    """The one identity a (chain-verified) certificate names, or IdentityError.

    Exactly one spiffe URI SAN in our trust domain, and a CN (if present) equal to its id.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("no_spiffe_san", "certificate has no subject alternative name") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise IdentityError(
            "no_spiffe_san", f"certificate carries {len(uris)} spiffe URIs, expected exactly 1"
        )
    identity = parse_spiffe_uri(uris[0], trust_domain)
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if any(cn.value != identity.id for cn in common_names):
        raise IdentityError("cn_san_mismatch", f"certificate CN does not match its SAN id {identity.id!r}")
    return identity
