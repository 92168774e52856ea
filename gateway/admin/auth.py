"""Who may call the admin API: operator certificates (mTLS), and the role the registry gives them.

The HTTPS listener asks for a client certificate but does not require one (EST enrollment uses a
token), and the TLS layer has already verified any certificate presented against the fleet CA. Here
every admin request is then judged, in this order, each refusal with its own reason:

    no certificate                       401 no_client_certificate
    no fleet identity in it              403 <the identity error's reason>
    not an operator (e.g. a unit)        403 not_an_operator
    certificate unknown or revoked       403 unknown_certificate / certificate_revoked
    operator revoked or removed          403 identity_revoked / unknown_identity
    no role, or a role without the right 403 no_role / role_lacks_right

The role is registry metadata (`fleetgate operator add NAME --role ...`), never anything the client
says, and it is read on every request, so a changed role counts at once. Every refusal is audited
with who (the certificate's identity, else the address) and what (method, path, the right asked).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web
from cryptography import x509

from gateway.admin.rights import RIGHT_TEXT, ROLE_RIGHTS
from pki.errors import VerificationError
from pki.names import Identity, IdentityError, identity_from_certificate
from pki.store import Registry
from pki.verify import check_validity


@dataclass(frozen=True)
class Operator:
    identity: Identity
    role: str

    @property
    def actor(self) -> str:
        return str(self.identity)


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    message: str
    actor: str
    role: str = ""


def client_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def authenticate(
    request: web.Request,
    registry: Registry,
    trust_domain: str,
    right: str,
    now: datetime,
    clock_skew: timedelta = timedelta(0),
) -> Operator | Refusal:
    cert = client_certificate(request)
    address = f"address/{request.remote or '?'}"
    if cert is None:
        return Refusal(
            401,
            "no_client_certificate",
            "the admin API needs an operator certificate over mTLS; pass --cert and --key or a --profile",
            address,
        )
    try:  # the TLS layer checks the chain, not the dates (see gateway/edge/transport.py)
        check_validity(cert, now, "operator certificate", clock_skew)
    except VerificationError as exc:
        return Refusal(403, f"certificate_{exc.reason}", exc.message, address)
    try:
        identity = identity_from_certificate(cert, trust_domain)
    except IdentityError as exc:
        return Refusal(403, exc.reason, f"the client certificate names no fleet identity: {exc}", address)
    actor = str(identity)
    if identity.kind != "operator":
        return Refusal(
            403,
            "not_an_operator",
            f"{actor} is not an operator; the admin API takes operator certificates only",
            actor,
        )
    known = registry.get_certificate(cert.serial_number)
    if known is None or known.status != "valid":
        reason = "unknown_certificate" if known is None else "certificate_revoked"
        return Refusal(403, reason, f"the certificate of {actor} is {reason.split('_')[-1]}", actor)
    record = registry.get_identity("operator", identity.id)
    if record is None or record.state == "revoked":
        reason = "unknown_identity" if record is None else "identity_revoked"
        return Refusal(403, reason, f"{actor} is {reason.split('_')[-1]} in the registry", actor)
    role = record.metadata.get("role", "")
    rights = ROLE_RIGHTS.get(role)
    if rights is None:
        return Refusal(
            403,
            "no_role",
            f"{actor} has no admin role; issue it again with --role ops|security|auditor|metrics",
            actor,
        )
    if right not in rights:
        return Refusal(
            403,
            "role_lacks_right",
            f"role {role} of {actor} may not {RIGHT_TEXT.get(right, right)}",
            actor,
            role,
        )
    return Operator(identity, role)
