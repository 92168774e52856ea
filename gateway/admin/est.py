"""EST (RFC 7030 subset) and CRL endpoints. Thin: parse, call the CA service, audit, answer.

    GET  /.well-known/est/cacerts          root + every trusted issuing CA, base64 PKCS#7 certs-only
    POST /.well-known/est/simpleenroll     HTTP Basic unit-id:token, base64 PKCS#10 → the new cert
    POST /.well-known/est/simplereenroll   mTLS with the current certificate, same identity only
    GET  /crl/N                            issuing CA N's CRL (DER): what its certificates name
    GET  /crl                              the oldest trusted issuing CA's CRL (DER): issuing CA 1's
                                           certificates name it, and it stays the oldest while trusted
    GET  /crl.pem                          every trusted issuing CA's CRL, the current one first

Refusals are one line of text with the status the refusal carries (400/401/403), and every
enrollment decision is audited: an issued certificate one record each, refusals through the refusal
sink, which aggregates them per source address (anyone may send them, as fast as they like). The
HTTP Basic user name is checked to be a unit id before anything records it, and never recorded
when it is not (only its length and a hash prefix).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.edge.admission import source_key
from gateway.stores.audit_log import AuditLog
from pki.enrollment import Refusal
from pki.est import CERTS_ONLY_CONTENT_TYPE, EstBodyError, decode_csr_body, encode_certs_only
from pki.names import IdentityError, identity_from_certificate, validate_id
from pki.service import STRICT_SELF_RENEWAL, EnrollmentResult, FleetCA

Clock = Callable[[], datetime]


class RefusalSink(Protocol):
    """Where refused HTTPS requests go: aggregated per source (gateway/app/audit_events.HttpRefusals)."""

    def __call__(
        self, *, source: str, action: str, subject: str, reason: str, details: dict[str, object] | None = None
    ) -> None: ...


def request_source(request: web.Request) -> str:
    """'address/<source>' of a request: its IPv4 address or IPv6 /64 (gateway/edge/admission.py)."""
    remote = request.remote or "?"
    return f"address/{source_key(f'[{remote}]:0' if ':' in remote else remote)}"


def fingerprint(text: str) -> str:
    """What identifies a string a stranger sent without recording it: a SHA-256 prefix."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class EstContext:
    ca: FleetCA
    audit: AuditLog
    unit_lifetime: timedelta
    max_body: int
    clock: Clock  # the process's wall clock (gateway/edge/driver.py: Clock.wall)
    on_issued: Callable[[x509.Certificate], None] | None = None
    clock_skew: timedelta = timedelta(0)  # tls.clock_skew_tolerance: how early a certificate may be used
    # certificates.self_renewal: may operators, services, partners renew over EST (refused if unnamed)
    self_renewal: Mapping[str, str] = field(default_factory=lambda: dict(STRICT_SELF_RENEWAL))
    body_timeout: float = 10.0  # limits.https_request_timeout: seconds a client has to send its body
    refused: RefusalSink | None = None  # None: each refusal is its own audit record (tests)


log = logging.getLogger("fleetgate.est")

STORAGE_UNAVAILABLE = (
    "the gateway cannot record state changes right now ({}); nothing was changed, try again later"
)


def storage_failure(exc: sqlite3.DatabaseError) -> str:
    """One sentence for a state change the database refused (disk full, I/O error, locked).

    The transaction was rolled back (pki.sqlite.transaction), so the caller may retry as is: a token is
    not burnt, a quarantine is not half applied. Logged without a traceback: it is an operating
    condition for the operator to fix (free disk space), not a bug."""
    text = str(exc).strip() or type(exc).__name__
    # A cluster's PostgreSQL away (pki/postgres.unreachable) already says it all in one sentence.
    message = text if text.startswith("PostgreSQL at ") else STORAGE_UNAVAILABLE.format(text)
    log.error("state change refused: %s", message)
    return message


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=message.rstrip(".") + ".\n", headers=headers)


def add_est_routes(app: web.Application, ctx: EstContext) -> None:
    app.router.add_get("/.well-known/est/cacerts", _handler(ctx, _cacerts))
    app.router.add_post("/.well-known/est/simpleenroll", _handler(ctx, _simpleenroll))
    app.router.add_post("/.well-known/est/simplereenroll", _handler(ctx, _simplereenroll))
    app.router.add_get("/crl", _handler(ctx, _crl_der))
    app.router.add_get("/crl/{generation:[0-9]{1,6}}", _handler(ctx, _crl_der))
    app.router.add_get("/crl.pem", _handler(ctx, _crl_pem))


Handler = Callable[[web.Request, EstContext], Awaitable[web.StreamResponse]]


def _handler(ctx: EstContext, fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request, ctx)
        except sqlite3.DatabaseError as exc:  # e.g. disk full: 503, never a 500 with a traceback
            return text_error(503, storage_failure(exc), {"Retry-After": "60"})

    return handle


def _certs_response(certs: list[x509.Certificate]) -> web.Response:
    return web.Response(
        body=encode_certs_only(certs),
        headers={"Content-Type": CERTS_ONLY_CONTENT_TYPE, "Content-Transfer-Encoding": "base64"},
    )


async def _cacerts(request: web.Request, ctx: EstContext) -> web.StreamResponse:
    # During an issuing CA rotation units hold certificates from either one: every trusted issuing CA
    # is listed, and a client picks the one that signed its certificate (pki.est_client.issuer_of).
    return _certs_response(ctx.ca.authority.trust_anchors())


async def _crl_der(request: web.Request, ctx: EstContext) -> web.StreamResponse:
    authority = ctx.ca.authority
    text = request.match_info.get("generation")
    generation = int(text) if text is not None else authority.issuing_cas[0].generation
    if authority.issuing_ca(generation) is None:
        return text_error(404, f"issuing CA {generation} is not trusted here; /crl.pem has every CRL")
    crl = ctx.ca.current_crl(ctx.clock(), generation)
    return web.Response(
        body=crl.public_bytes(serialization.Encoding.DER), content_type="application/pkix-crl"
    )


async def _crl_pem(request: web.Request, ctx: EstContext) -> web.StreamResponse:
    crls = ctx.ca.current_crls(ctx.clock())
    text = "".join(crl.public_bytes(serialization.Encoding.PEM).decode() for crl in crls)
    return web.Response(text=text, content_type="text/plain")


class BodyTimeout(Exception):
    """The client did not send its whole body in time (a slow-body client holds a connection)."""


async def read_limited(request: web.Request, limit: int, timeout: float | None = None) -> bytes | None:
    """The request body, or None when it is larger than `limit` (read no further than that).

    Raises BodyTimeout when it has not all arrived within `timeout` seconds."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(16 * 1024):
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout from None
    return b"".join(chunks)


def body_timeout_response(timeout: float) -> web.Response:
    response = text_error(408, f"the request body did not arrive within {timeout:g} s; send it at once")
    response.force_close()
    return response


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep and user else None


async def _read_csr(request: web.Request, ctx: EstContext) -> x509.CertificateSigningRequest | web.Response:
    try:
        body = await read_limited(request, ctx.max_body, ctx.body_timeout)
    except BodyTimeout:
        return body_timeout_response(ctx.body_timeout)
    if body is None:
        return text_error(
            413, f"request body is larger than {ctx.max_body} bytes; send one base64 PKCS#10 CSR"
        )
    try:
        return decode_csr_body(body, max_size=ctx.max_body)
    except EstBodyError as exc:
        return text_error(400, str(exc))


async def _simpleenroll(request: web.Request, ctx: EstContext) -> web.StreamResponse:
    credentials = _basic_credentials(request)
    if credentials is None:
        return text_error(
            401,
            "enrollment needs HTTP Basic credentials unit-id:token from `fleetgate unit add`",
            {"WWW-Authenticate": 'Basic realm="fleetgate EST"'},
        )
    unit_id, token = credentials
    try:
        validate_id("unit", unit_id)
    except IdentityError:
        # Anyone can send any user name: it is not recorded unless it could be a unit id.
        _refuse(
            ctx,
            request,
            "est.enroll",
            request_source(request),
            "invalid_unit_id",
            {"user_name_chars": len(unit_id), "user_name_sha256": fingerprint(unit_id)},
        )
        return text_error(
            401,
            "the user name is not a unit id; send the id `fleetgate unit add` registered "
            "(1-64 letters, digits, '.', '_' or '-') and its token",
            {"WWW-Authenticate": 'Basic realm="fleetgate EST"'},
        )
    csr = await _read_csr(request, ctx)
    if isinstance(csr, web.Response):
        _refuse(ctx, request, "est.enroll", f"unit/{unit_id}", _body_refusal_reason(csr))
        return csr
    now = ctx.clock()
    result = ctx.ca.enroll(unit_id, token, csr, now, ctx.unit_lifetime)
    return _answer(ctx, request, result, actor=f"unit/{unit_id}", action="est.enroll")


async def _simplereenroll(request: web.Request, ctx: EstContext) -> web.StreamResponse:
    current = _client_certificate(request)
    if current is None:
        return text_error(
            401, "re-enrollment needs your current certificate over mTLS; use `fleetgate renew`"
        )
    try:
        identity = identity_from_certificate(current, ctx.ca.authority.trust_domain)
    except IdentityError as exc:
        return text_error(403, f"the client certificate names no fleet identity: {exc}")
    if ctx.clock() + ctx.clock_skew < current.not_valid_before_utc:
        # The TLS layer checks no dates (gateway/edge/transport.py); an expired certificate gets the CA's
        # own refusal below, which says to enroll again.
        return text_error(
            403,
            f"your certificate is not valid before {current.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
            "check this machine's clock",
        )
    csr = await _read_csr(request, ctx)
    if isinstance(csr, web.Response):
        _refuse(ctx, request, "est.reenroll", str(identity), _body_refusal_reason(csr))
        return csr
    result = ctx.ca.reenroll(current, csr, ctx.clock(), ctx.unit_lifetime, self_renewal=ctx.self_renewal)
    return _answer(ctx, request, result, actor=str(identity), action="est.reenroll", authenticated=True)


def _client_certificate(request: web.Request) -> x509.Certificate | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def _answer(
    ctx: EstContext,
    request: web.Request,
    result: EnrollmentResult,
    *,
    actor: str,
    action: str,
    authenticated: bool = False,
) -> web.Response:
    """The EST answer, audited. `authenticated`: the actor was proven by its certificate (re-enroll),
    so a refusal is its own record under that actor, like a named operator's admin refusal; an
    unproven claim (a token enrollment) is aggregated per source instead."""
    now = ctx.clock()
    address = request.remote
    if result.certificate is None:
        refusal: Refusal = result.refusal  # type: ignore[assignment]
        if authenticated:
            ctx.audit.append(
                actor=actor,
                action=action,
                subject=actor,
                outcome="refused",
                reason=refusal.reason.code,
                details={"address": address or "", "detail": refusal.detail},
                now=now,
            )
        else:
            _refuse(ctx, request, action, actor, refusal.reason.code, {"detail": refusal.detail})
        message = refusal.reason.message + (f" ({refusal.detail})" if refusal.detail else "")
        return text_error(refusal.reason.http_status, message)
    cert = result.certificate
    ctx.audit.append(
        actor=actor,
        action=action,
        subject=actor,
        outcome="ok",
        reason="issued",
        details={
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "address": address or "",
        },
        now=now,
    )
    if ctx.on_issued is not None:
        ctx.on_issued(cert)
    return _certs_response([cert])


def _body_refusal_reason(response: web.Response) -> str:
    return {413: "body_too_large", 408: "body_timeout"}.get(response.status, "bad_csr_body")


def _refuse(
    ctx: EstContext,
    request: web.Request,
    action: str,
    subject: str,
    reason: str,
    details: dict[str, object] | None = None,
) -> None:
    """Audit a refused enrollment: through the sink, aggregated per source, when there is one."""
    if ctx.refused is not None:
        ctx.refused(
            source=request_source(request), action=action, subject=subject, reason=reason, details=details
        )
        return
    ctx.audit.append(
        actor=request_source(request),
        action=action,
        subject=subject,
        outcome="refused",
        reason=reason,
        details=details,
        now=ctx.clock(),
    )
