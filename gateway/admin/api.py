"""The HTTPS admin API (JSON, mTLS, operator roles). Thin: authenticate, parse, call Operations, answer.

Routes, and the right each needs (roles in gateway/admin/auth.py, described in gateway/admin/openapi.py):

    GET  /api/units?state=&online=&expiring=&page=&per_page=
                                              units.read            paged, filtered
    POST /api/units                           units.register        {"units": [{"unit", "vin"}, ...]}
    GET  /api/units/{id}                      units.read
    POST /api/units/{id}/token                units.token           {"ttl_hours": 24, "replace": false}
    GET  /api/sessions                        sessions.read
    POST /api/sessions/{client_id}/kick       sessions.kick         {"reason": "...", "confirm": true}
    POST /api/units/{id}/quarantine           units.quarantine      {"reason": "..."}
    POST /api/units/{id}/release              units.release
    POST /api/identities/{kind}/{id}/revoke   identities.revoke     {"reason": "...", "confirm": true}
    POST /api/partners/{id}/disconnect        partners.disconnect   {"dry_run": false}
    POST /api/policy/reload                   policy.reload
    GET  /api/audit?since=SEQ&limit=N         audit.read
    GET  /api/events?since=SEQ&heartbeat=S    events.read           (Server-Sent Events)
    GET  /api/flows                           flows.read            the live data-flow map (JSON)
    GET  /api/openapi.json                    docs.read
    GET  /metrics                             metrics.read          Prometheus text (not audited)

Errors are `{"error": "<one sentence>", "code": "<stable reason>"}` with 400 (bad input), 401/403
(who you are / what your role allows), 404 (no such unit/partner), 409 (state forbids it), 415 (a
body that is not JSON), 422 (a policy that cannot be loaded). Refusals by role are audited here;
the operations audit themselves with the operator as actor; reads are audited as `admin.<right>`.

Before anyone is authenticated, a request with a foreign `Origin` (a browser on another site) is
refused 403 `foreign_origin`, and a POST whose body is not declared `application/json` 415: with an
operator certificate installed in a browser, a cross-site form could otherwise act as the operator
(a form can send text/plain but cannot set application/json without the site's consent). A request
without `Origin` (the CLI, curl, Prometheus) is fine. Refusals that named no operator (no
certificate, another kind's certificate, these two) are aggregated per source address in the audit
log; refusals of a named operator (its role lacks the right, it was revoked) are one record each.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.admin.auth import Operator, Refusal, authenticate
from gateway.admin.est import RefusalSink, request_source, storage_failure
from gateway.admin.openapi import openapi_document
from gateway.admin.rights import RIGHT_TEXT
from gateway.admin.sse import DEFAULT_HEARTBEAT, AuditFeed, stream_events
from gateway.admin.totp_store import ENROLLED, METADATA_KEY, TotpStore, TotpStoreError
from gateway.admin.totp_store import HEADER as TOTP_HEADER
from gateway.broker import SessionInfo
from gateway.context.flows import FlowMap
from gateway.ops.operations import Operations, OpsError
from gateway.ops.provisioning import requests_from_json
from gateway.ops.status import UnitFilter, page_of, parse_duration, session_view
from gateway.policy.rules import Policy
from gateway.policy.second_factor import DEFAULT_SENSITIVE
from gateway.render.flows_render import flowmap_to_dict
from gateway.stores.audit_log import AuditLog
from pki.errors import NotFoundError, PkiError
from pki.store import Registry

MAX_AUDIT_PAGE = 1000
MAX_UNIT_PAGE, DEFAULT_UNIT_PAGE = 1000, 100
MAX_UNITS_PER_REQUEST = 500  # ~30 KiB of JSON in and out, inside the HTTPS body limit (64 KiB)
MAX_TOKEN_HOURS = 24 * 30
log = logging.getLogger("fleetgate.admin")


@dataclass
class AdminContext:
    ops: Operations
    audit: AuditLog
    registry: Registry
    trust_domain: str
    sessions: Callable[[], list[SessionInfo]]
    reload_policy: Callable[[str], Policy | None]
    feed: AuditFeed
    clock: Callable[[], datetime]  # the process's wall clock (gateway/edge/driver.py: Clock.wall)
    totp: TotpStore | None = None  # the second factor for sensitive rights
    flows: Callable[[], FlowMap] | None = None  # the live data-flow map
    clock_skew: timedelta = timedelta(0)  # tls.clock_skew_tolerance, for operator certificates
    body_timeout: float = 10.0  # limits.https_request_timeout: seconds a client has to send its body
    refused: RefusalSink | None = None  # None: each refusal is its own audit record (tests)
    metrics: Callable[[], bytes] | None = None  # the Prometheus exposition, for GET /metrics
    token_ttl: timedelta = timedelta(hours=24)  # certificates.token_ttl_hours: enrollment tokens


class BadRequest(Exception):
    """The request is malformed; the message says what to send instead."""


Handler = Callable[[web.Request, AdminContext, Operator], Awaitable[web.StreamResponse]]
AUDITED_READS = frozenset({"units.read", "sessions.read", "audit.read", "events.read", "flows.read"})


def error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": message.rstrip(".") + ".", "code": code}, status=status)


def _endpoint(
    ctx: AdminContext, right: str, fn: Handler
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        who = _request_refusal(request) or authenticate(
            request, ctx.registry, ctx.trust_domain, right, ctx.clock(), ctx.clock_skew
        )
        if isinstance(who, Refusal):
            _audit_refusal(ctx, request, who, right)
            return error(who.status, who.message, who.reason)
        if right in DEFAULT_SENSITIVE or (ctx.totp is not None and ctx.totp.policy.requires_totp(right)):
            refused = _second_factor(request, ctx, who, right)
            if refused is not None:
                return refused
        if right in AUDITED_READS:
            ctx.audit.append(
                actor=who.actor,
                action=f"admin.{right}",
                subject=request.path_qs,
                outcome="ok",
                details={"role": who.role},
                now=ctx.clock(),
            )
        try:
            return await fn(request, ctx, who)
        except BadRequest as exc:
            return error(400, str(exc), "bad_request")
        except BodyTimeout:
            response = error(
                408, f"the request body did not arrive within {ctx.body_timeout:g} s", "request_timeout"
            )
            response.force_close()
            return response
        except OpsError as exc:
            return error(exc.status, str(exc), exc.code)
        except PkiError as exc:
            return error(404 if isinstance(exc, NotFoundError) else 409, str(exc), exc.reason)
        except sqlite3.DatabaseError as exc:  # e.g. disk full: a clear 503, nothing half written
            return error(503, storage_failure(exc), "storage_unavailable")

    return handle


def _request_refusal(request: web.Request) -> Refusal | None:
    """A browser's cross-site request, refused before anyone is authenticated (see the module doc)."""
    origin = request.headers.get("Origin")
    if origin is not None and not same_origin(origin, request.host):
        return Refusal(
            403,
            "foreign_origin",
            "requests from another site (Origin header) are refused; use the CLI or send no Origin",
            request_source(request),
        )
    declares_body = request.body_exists or "Content-Type" in request.headers
    if request.method == "POST" and declares_body and request.content_type != "application/json":
        return Refusal(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
            request_source(request),
        )
    return None


def same_origin(origin: str, host: str) -> bool:
    """Whether an Origin header names this gateway as the client reached it (scheme https, the Host)."""
    parts = urlsplit(origin.strip())
    if parts.scheme != "https" or not parts.netloc or not host:
        return False

    def normal(netloc: str) -> str:
        netloc = netloc.lower()
        return netloc[: -len(":443")] if netloc.endswith(":443") else netloc

    return normal(parts.netloc) == normal(host)


def _audit_refusal(ctx: AdminContext, request: web.Request, who: Refusal, right: str) -> None:
    subject = f"{request.method} {request.path}"
    if who.actor.startswith("operator/"):  # a named operator's refusal matters one by one
        ctx.audit.append(
            actor=who.actor,
            action="admin.request",
            subject=subject,
            outcome="refused",
            reason=who.reason,
            details={"right": right, "role": who.role},
            now=ctx.clock(),
        )
        return
    details: dict[str, object] = {"right": right}
    if not who.actor.startswith("address/"):
        details["identity"] = who.actor  # e.g. a unit's certificate: not an operator
    source = request_source(request)
    if ctx.refused is not None:
        ctx.refused(
            source=source, action="admin.request", subject=subject, reason=who.reason, details=details
        )
        return
    ctx.audit.append(
        actor=source,
        action="admin.request",
        subject=subject,
        outcome="refused",
        reason=who.reason,
        details=details,
        now=ctx.clock(),
    )


def _second_factor(request: web.Request, ctx: AdminContext, who: Operator, right: str) -> web.Response | None:
    """None when the operator may go on; else the refusal. Every check is audited, never the code.

    The second factor belongs to the right: an operator without one is refused (`totp_not_enrolled`),
    and one the registry says is enrolled but whose secret is gone is an error, not a downgrade."""
    operator_id = who.identity.id
    outcome, reason = _check_second_factor(request, ctx, operator_id)
    ctx.audit.append(
        actor=who.actor,
        action="admin.second_factor",
        subject=f"{request.method} {request.path}",
        outcome=outcome,
        reason=reason,
        details={"right": right, "role": who.role},
        now=ctx.clock(),
    )
    if outcome != "refused":
        return None
    enroll = f"`fleetgate operator totp {operator_id}` on the gateway host"
    what = RIGHT_TEXT.get(right, right)
    messages = {
        "totp_required": f"{what} needs a TOTP code: send it in the {TOTP_HEADER} header (CLI: --totp CODE)",
        "totp_bad_code": "the TOTP code is not valid now; use the current code from your authenticator",
        "totp_replayed": "that TOTP code was already used; wait for the next one",
        "totp_locked_out": "too many failed TOTP codes; try again later",
        "totp_not_enrolled": f"{what} needs a second factor and {who.actor} has none; enroll one with "
        f"{enroll}, then send its code in the {TOTP_HEADER} header",
        "totp_secret_missing": f"{who.actor} is enrolled for a second factor but its secret is missing on "
        f"the gateway; restore DATA/totp from a backup or enroll again with {enroll}",
        "totp_unavailable": "the second factor cannot be checked now (see the gateway log); nothing was done",
    }
    status = {"totp_locked_out": 429, "totp_not_enrolled": 403}.get(reason, 401)
    if reason in ("totp_secret_missing", "totp_unavailable"):
        status = 503  # the gateway's state is wrong, not the request: the operator cannot fix it
    return error(status, messages.get(reason, "the TOTP code was refused"), reason)


def _check_second_factor(request: web.Request, ctx: AdminContext, operator_id: str) -> tuple[str, str]:
    """(outcome, reason) of the second-factor check for one request."""
    store = ctx.totp
    if store is None:
        log.error("refusing a sensitive admin request: this gateway has no second-factor store")
        return "refused", "totp_unavailable"
    record = ctx.registry.get_identity("operator", operator_id)
    marked = record is not None and record.metadata.get(METADATA_KEY) == ENROLLED
    enrolment = store.enrolment(operator_id, marked)
    if enrolment == "secret_missing":
        log.error(
            "operator %s is enrolled for TOTP in the registry but DATA/totp/%s.secret is missing; "
            "refusing its sensitive requests until the secret is restored or it enrolls again",
            operator_id,
            operator_id,
        )
        return "refused", "totp_secret_missing"
    if enrolment == "not_enrolled":
        return "refused", "totp_not_enrolled"
    code = request.headers.get(TOTP_HEADER, "").strip()
    if not code:
        return "refused", "totp_required"
    try:
        result = store.verify(operator_id, code, ctx.clock().timestamp())
    except TotpStoreError as exc:
        log.error("refusing a sensitive admin request of operator %s: %s", operator_id, exc)
        return "refused", "totp_unavailable"
    if result.reason == "not_enrolled":  # the secret vanished between the two looks
        return "refused", "totp_secret_missing"
    return ("ok", "ok") if result.ok else ("refused", f"totp_{result.reason}")


# --- parsing ------------------------------------------------------------------------------------


class BodyTimeout(Exception):
    """The body did not arrive in time."""


async def _body(request: web.Request, timeout: float) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        async with asyncio.timeout(timeout):
            data = await request.json()
    except TimeoutError:
        raise BodyTimeout from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest('the body must be a JSON object such as {"reason": "suspected tampering"}') from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object, not a list or a bare value")
    return data


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f'"{name}" is required and must be a non-empty string')
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f'"{name}" must be true or false')
    return value


def _number(request: web.Request, name: str, low: float, high: float) -> float | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a number between {low:g} and {high:g}") from None
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low:g} and {high:g}")
    return value


# --- handlers -----------------------------------------------------------------------------------


async def list_units(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    now = ctx.clock()
    wanted = _unit_filter(request)
    page = int(_number(request, "page", 1, 2**31) or 1)
    per_page = int(_number(request, "per_page", 1, MAX_UNIT_PAGE) or DEFAULT_UNIT_PAGE)
    rows = wanted.apply(ctx.ops.status(now), now)
    return web.json_response(page_of(rows, page, per_page).as_dict())


def _unit_filter(request: web.Request) -> UnitFilter:
    query = request.query
    states = query.getall("state", [])
    online = query.get("online")
    if online not in (None, "true", "false"):
        raise BadRequest("query parameter online must be true or false")
    try:
        expiring = parse_duration(query["expiring"]) if "expiring" in query else None
        return UnitFilter(
            states=frozenset(s for value in states for s in value.split(",") if s) or None,
            online=None if online is None else online == "true",
            expiring_within=expiring,
        )
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


async def register_units(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    body = await _body(request, ctx.body_timeout)
    requests = requests_from_json(body.get("units"), MAX_UNITS_PER_REQUEST)
    ttl = _ttl(body, ctx.token_ttl)
    report = ctx.ops.register_units(requests, who.actor, ctx.clock(), ttl, _flag(body, "skip_existing"))
    answer: dict[str, Any] = {**report.summary(), "results": [r.as_dict() for r in report.results]}
    if report.ok:
        return web.json_response(answer)
    refused = next(r for r in report.results if r.status == "refused")
    message = f"nothing was registered: row {refused.row} ({refused.unit}): {refused.error}"
    return web.json_response({"error": message, "code": refused.code, **answer}, status=422)


def _ttl(body: dict[str, Any], default: timedelta) -> timedelta:
    hours = body.get("ttl_hours")
    if hours is None:
        return default
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not 0 < hours <= MAX_TOKEN_HOURS:
        raise BadRequest(f'"ttl_hours" must be a number of hours above 0 and at most {MAX_TOKEN_HOURS}')
    return timedelta(hours=hours)


async def new_token(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    body = await _body(request, ctx.body_timeout)
    ttl = _ttl(body, ctx.token_ttl)
    result = ctx.ops.new_token(request.match_info["id"], who.actor, ctx.clock(), ttl, _flag(body, "replace"))
    return web.json_response(result)


async def show_unit(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    unit_id = request.match_info["id"]
    rows = ctx.ops.status(ctx.clock(), unit_id)
    if not rows:
        raise OpsError("unknown_unit", f"there is no unit {unit_id}; see GET /api/units", 404)
    return web.json_response(rows[0].as_dict())


async def list_sessions(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    return web.json_response({"sessions": [session_view(s) for s in ctx.sessions()]})


async def kick_session(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    body = await _body(request, ctx.body_timeout)
    reason = body.get("reason") or "closed by an operator"
    if not isinstance(reason, str):
        raise BadRequest('"reason" must be a string')
    confirm = _flag(body, "confirm")
    result = ctx.ops.kick(request.match_info["client_id"], reason, who.actor, ctx.clock(), confirm)
    return web.json_response(result.as_dict())


async def quarantine(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    reason = _text(await _body(request, ctx.body_timeout), "reason")
    result = ctx.ops.quarantine(request.match_info["id"], reason, who.actor, ctx.clock())
    return web.json_response(result.as_dict())


async def release(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    result = ctx.ops.release(request.match_info["id"], who.actor, ctx.clock())
    return web.json_response(result.as_dict())


async def revoke(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    body = await _body(request, ctx.body_timeout)
    reason = _text(body, "reason")
    if body.get("confirm") is not True:
        raise BadRequest(
            'revoking cuts the whole session, vehicle control included; send "confirm": true to go ahead'
        )
    kind, ident = request.match_info["kind"], request.match_info["id"]
    result = ctx.ops.revoke_identity(kind, ident, reason, who.actor, ctx.clock())
    return web.json_response(result.as_dict())


async def partner_disconnect(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    dry_run = _flag(await _body(request, ctx.body_timeout), "dry_run")
    report = ctx.ops.partner_disconnect(request.match_info["id"], who.actor, ctx.clock(), dry_run)
    return web.json_response(report.as_dict())


async def reload_policy(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    policy = ctx.reload_policy(who.actor)
    if policy is None:
        return error(
            422,
            "the policy file cannot be loaded; the current policy stays (see the audit log)",
            "invalid_policy",
        )
    return web.json_response({"reloaded": True, "source": policy.source, "digest": policy.digest})


async def audit_page(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    since = int(_number(request, "since", 0, 2**62) or 0)
    limit = int(_number(request, "limit", 1, MAX_AUDIT_PAGE) or MAX_AUDIT_PAGE)
    records = ctx.audit.records(since_seq=since, limit=limit)
    return web.json_response({"records": [r.as_dict() for r in records], "head": ctx.audit.head()[0]})


async def events(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    since_value = _number(request, "since", 0, 2**62)
    last_id = request.headers.get("Last-Event-ID", "")
    since = int(since_value) if since_value is not None else (int(last_id) if last_id.isdigit() else None)
    heartbeat = _number(request, "heartbeat", 0.05, 300) or DEFAULT_HEARTBEAT
    return await stream_events(request, ctx.audit, ctx.feed, since, heartbeat)


async def flows(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    if ctx.flows is None:
        raise OpsError("no_flows", "this gateway keeps no flow map", 404)
    return web.json_response(flowmap_to_dict(ctx.flows()))


async def metrics(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    if ctx.metrics is None:
        raise OpsError("no_metrics", "this gateway exports no metrics", 404)
    return web.Response(body=ctx.metrics(), content_type="text/plain", charset="utf-8")


async def openapi(request: web.Request, ctx: AdminContext, who: Operator) -> web.StreamResponse:
    document = openapi_document()
    document["servers"] = [{"url": f"https://{request.host}"}]  # where this gateway was reached
    return web.json_response(document)


ROUTES: tuple[tuple[str, str, str, Handler], ...] = (
    ("GET", "/api/units", "units.read", list_units),
    ("POST", "/api/units", "units.register", register_units),
    ("GET", "/api/units/{id}", "units.read", show_unit),
    ("POST", "/api/units/{id}/token", "units.token", new_token),
    ("GET", "/api/sessions", "sessions.read", list_sessions),
    ("POST", "/api/sessions/{client_id}/kick", "sessions.kick", kick_session),
    ("POST", "/api/units/{id}/quarantine", "units.quarantine", quarantine),
    ("POST", "/api/units/{id}/release", "units.release", release),
    ("POST", "/api/identities/{kind}/{id}/revoke", "identities.revoke", revoke),
    ("POST", "/api/partners/{id}/disconnect", "partners.disconnect", partner_disconnect),
    ("POST", "/api/policy/reload", "policy.reload", reload_policy),
    ("GET", "/api/audit", "audit.read", audit_page),
    ("GET", "/api/events", "events.read", events),
    ("GET", "/api/flows", "flows.read", flows),
    ("GET", "/api/openapi.json", "docs.read", openapi),
    ("GET", "/metrics", "metrics.read", metrics),
)


def add_admin_routes(app: web.Application, ctx: AdminContext) -> None:
    for method, path, right, handler in ROUTES:
        app.router.add_route(method, path, _endpoint(ctx, right, handler))

    async def close_streams(app: web.Application) -> None:
        ctx.feed.close()

    app.on_shutdown.append(close_streams)
