"""The fleet console: HTML pages on the admin HTTPS listener, with the admin API's security and no less.

Why server-rendered pages and a little vanilla JavaScript (console_assets/console.js) rather than a
framework: the pages are tables, one SVG map and a handful of buttons; rendering them here keeps the
role checks, the escaping and the data in one Python process, needs no build step and no node
toolchain on a machine without internet, and ships as three files in the package.

Security, page by page and button by button:

- **Who**: every page and asset goes through `authenticate` (gateway/admin/auth.py) with the page's
  right: an operator certificate over mTLS, its registry role read on every request. No cookie and no
  session exist, so there is nothing to steal or replay; `SameSite` has nothing to apply to because
  the console sets no cookie at all (the credential is the TLS client certificate).
- **What**: each page needs a right (ROUTES below); a button is drawn only when the role has the
  action's right, and the action itself is the admin API's JSON endpoint, which checks the right
  again (a forged request from a role without it gets 403 `role_lacks_right`).
- **Second factor**: a button whose right is sensitive (the policy's `second_factor.sensitive`) asks
  for the TOTP code in the page and sends it in the `X-Fleetgate-TOTP` header.
- **Cross-site**: the API refuses a foreign `Origin` and any POST body not declared JSON (a form
  cannot send that cross-site); the pages also refuse a request a browser marks
  `Sec-Fetch-Site: cross-site` (a link or frame from another site), and forbid framing.
- **CSP**: `default-src 'none'`, scripts, styles and images only from this origin (no inline script
  or style anywhere), `connect-src 'self'` for the JSON calls and the SSE feed, `form-action 'self'`
  for the GET search forms, `frame-ancestors 'none'`.
- **Escaping**: every value a stranger could choose (unit ids, reasons, topics, payloads, audit text)
  goes through `esc` in console_html.py: control characters made visible (render/safe_text), then
  HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from aiohttp import web

from gateway.admin import console_html as html
from gateway.admin.api import _audit_refusal, _request_refusal, error
from gateway.admin.auth import Operator, Refusal, authenticate
from gateway.admin.console_context import ConsoleContext
from gateway.admin.sse import DEFAULT_HEARTBEAT, stream_events
from gateway.render.flows_render import to_svg
from gateway.stores.audit_log import AuditRecord

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
FLEET_ACTIONS = frozenset(
    {
        "detector.fired",
        "unit.quarantine",
        "unit.release",
        "identity.revoke",
        "cert.revoke",
        "partner.disconnect",
    }
)
ASSETS = {"console.css": "text/css", "console.js": "text/javascript"}


Page = Callable[[web.Request, ConsoleContext, Operator], str]


def _cross_site(request: web.Request) -> Refusal | None:
    if request.headers.get("Sec-Fetch-Site", "") == "cross-site":
        return Refusal(
            403,
            "foreign_origin",
            "the console does not open from another site's link or frame; type its address",
            f"address/{request.remote or '?'}",
        )
    return None


def _admit(cc: ConsoleContext, request: web.Request, right: str, audited: bool) -> Operator | web.Response:
    """The operator, or the refusal to send (audited like the API's)."""
    ctx = cc.admin
    who = (
        _request_refusal(request)
        or _cross_site(request)
        or authenticate(request, ctx.registry, ctx.trust_domain, right, ctx.clock(), ctx.clock_skew)
    )
    if isinstance(who, Refusal):
        _audit_refusal(ctx, request, who, right)
        refusal = error(who.status, who.message, who.reason)
        refusal.headers.update(SECURITY_HEADERS)
        return refusal
    if audited:
        ctx.audit.append(
            actor=who.actor,
            action="admin.console",
            subject=request.path_qs,
            outcome="ok",
            details={"role": who.role, "right": right},
            now=ctx.clock(),
        )
    return who


def _guarded(
    cc: ConsoleContext,
    right: str,
    answer: Callable[[web.Request, Operator], web.StreamResponse],
    audited: bool,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        who = _admit(cc, request, right, audited)
        if isinstance(who, web.Response):
            return who
        response = answer(request, who)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return handle


def _unit_live(cc: ConsoleContext) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    def answer(request: web.Request, who: Operator) -> web.StreamResponse:
        live = html.unit_live(cc, request.match_info["id"])
        if live is None:
            return error(404, f"there is no unit {request.match_info['id']}", "unknown_unit")
        return web.json_response(live)

    # Polled every second by an open unit page: the page view was audited, its refreshes are not.
    return _guarded(cc, "units.read", answer, audited=False)


def fleet_event(record: AuditRecord) -> bool:
    """What the fleet page's feed shows anyone who may read units: what happened to units and
    partners (detector firings, quarantines, releases, revocations, partner cuts) and units'
    denials; not operators' requests, handshakes from addresses or the rest of the audit log."""
    if record.action in FLEET_ACTIONS:
        return record.subject.startswith(("unit/", "partner/")) or record.action == "partner.disconnect"
    return record.outcome in ("denied", "refused") and record.actor.startswith("unit/")


def _fleet_events(cc: ConsoleContext) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        who = _admit(cc, request, "units.read", audited=True)
        if isinstance(who, web.Response):
            return who
        text = request.query.get("since", "")
        last_id = request.headers.get("Last-Event-ID", "")
        since = int(last_id) if last_id.isdigit() else (int(text) if text.isdigit() else None)
        ctx = cc.admin
        return await stream_events(request, ctx.audit, ctx.feed, since, DEFAULT_HEARTBEAT, fleet_event)

    return handle


def _page(
    cc: ConsoleContext, right: str, page: Page
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    def answer(request: web.Request, who: Operator) -> web.StreamResponse:
        try:
            body = page(request, cc, who)
        except html.NotFound as exc:
            return web.Response(text=html.not_found(who, str(exc)), status=404, content_type="text/html")
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    return _guarded(cc, right, answer, audited=True)


def _asset(cc: ConsoleContext) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    def answer(request: web.Request, who: Operator) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ASSETS:
            return error(404, f"there is no console asset {name}", "not_found")
        data = files("gateway.admin").joinpath("console_assets", name).read_bytes()
        return web.Response(body=data, content_type=ASSETS[name], charset="utf-8")

    return _guarded(cc, "units.read", answer, audited=False)


def _flows_svg(cc: ConsoleContext) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    def answer(request: web.Request, who: Operator) -> web.StreamResponse:
        if cc.admin.flows is None:
            return error(404, "this gateway keeps no flow map", "no_flows")
        response = web.Response(text=to_svg(cc.admin.flows()), content_type="image/svg+xml", charset="utf-8")
        # Shown only as an <img> (no script ever runs there); the drawing styles itself inline.
        response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
        return response

    return _guarded(cc, "flows.read", answer, audited=False)


ROUTES: tuple[tuple[str, str, Page], ...] = (
    ("/console", "units.read", html.fleet_page),
    ("/console/units/{id}", "units.read", html.unit_page),
    ("/console/map", "units.read", html.map_page),
    ("/console/partners", "sessions.read", html.partners_page),
    ("/console/audit", "audit.read", html.audit_page),
    ("/console/flows", "flows.read", html.flows_page),
)


def add_console_routes(app: web.Application, cc: ConsoleContext) -> None:
    for path, right, page in ROUTES:
        app.router.add_get(path, _page(cc, right, page))
    app.router.add_get("/console/", _page(cc, "units.read", html.fleet_page))
    app.router.add_get("/console/assets/{name}", _asset(cc))
    app.router.add_get("/console/flows.svg", _flows_svg(cc))
    app.router.add_get("/console/events", _fleet_events(cc))
    app.router.add_get("/console/units/{id}/live", _unit_live(cc))
