"""The console's pages as HTML strings (gateway/admin/console.py serves them and says why this way).

Every value that a client, a partner or an operator could have chosen goes through `esc`: control
and bidi characters made visible (gateway/render/safe_text.py), then HTML-escaped, quotes included,
so it is safe in text and in attribute values alike. Nothing here writes inline script or style (the
CSP forbids both): behaviour hangs on `data-*` attributes read by console_assets/console.js, colours
on classes in console_assets/console.css. Buttons are drawn only for the rights the role has; the
API they call checks again.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web

from gateway.admin.auth import Operator
from gateway.admin.console_context import ConsoleContext
from gateway.context.unit_watch import Fix, redacted
from gateway.ops.status import UnitStatus
from gateway.render.flows_render import table_rows
from gateway.render.safe_text import printable
from gateway.stores.audit_log import AuditRecord

STATES = ("online", "offline", "quarantined", "restricted", "revoked")
HISTORY_WINDOW = 5000  # audit records looked at for one page (the newest)
MAX_ROWS = 200
NAV = (
    ("/console", "Fleet", "units.read"),
    ("/console/map", "Map", "units.read"),
    ("/console/partners", "Partners", "sessions.read"),
    ("/console/audit", "Audit", "audit.read"),
    ("/console/flows", "Flows", "flows.read"),
)
EVENT_REPLAY = 500  # audit records replayed into the fleet page's feed when it opens


class NotFound(Exception):
    """No such unit (or partner): the page says so in one sentence."""


def esc(value: object, limit: int | None = None) -> str:
    return html.escape(printable("" if value is None else value, limit), quote=True)


def _url(path: str) -> str:
    return quote(path, safe="/")


def _ago(epoch: float | None, now: float) -> str:
    if epoch is None:
        return "never"
    seconds = max(0.0, now - epoch)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


# --- the frame --------------------------------------------------------------------------------


def layout(cc: ConsoleContext, who: Operator, title: str, body: str, page: str = "") -> str:
    rights = cc.rights(who)
    links = "".join(
        f'<li><a href="{href}"{" aria-current=page" if href == page else ""}>{name}</a></li>'
        for href, name, right in NAV
        if right in rights
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · fleetgate</title>"
        '<link rel="stylesheet" href="/console/assets/console.css">'
        '<script src="/console/assets/console.js" defer></script></head><body>'
        '<a class="skip" href="#main">Skip to content</a>'
        '<header><span class="brand">fleetgate</span>'
        f'<nav aria-label="Console pages"><ul>{links}</ul></nav>'
        f'<span class="who">{esc(who.actor)} · role {esc(who.role)}</span></header>'
        f'<main id="main" tabindex="-1"><h1>{esc(title)}</h1>{body}</main></body></html>'
    )


def not_found(who: Operator, message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Not found · fleetgate</title>'
        '<link rel="stylesheet" href="/console/assets/console.css"></head><body>'
        f'<main id="main"><h1>Not found</h1><p>{esc(message)}</p>'
        '<p><a href="/console">Back to the fleet</a></p></main></body></html>'
    )


def _table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}">nothing to show</td></tr>'
    return (
        f'<div class="scroll"><table class="{cls}"><caption>{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


# --- fleet ------------------------------------------------------------------------------------


def unit_states(cc: ConsoleContext, row: UnitStatus) -> set[str]:
    states = {"online" if row.online else "offline"}
    if row.state in ("quarantined", "revoked"):
        states.add(row.state)
    posture = cc.posture(row.unit)
    if posture is not None and posture.startswith("restricted"):
        states.add("restricted")
    return states


def _mode(row: UnitStatus, posture: str | None) -> str:
    if row.state == "revoked":
        return "revoked (cut off, control included)"
    if row.state == "quarantined":
        return "diagnostic-only (quarantined)"
    if posture is not None and posture.startswith("restricted"):
        return "restricted (posture below the policy's minimum)"
    return "normal"


def fleet_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    rows = cc.admin.ops.status(cc.admin.clock())
    states = {row.unit: unit_states(cc, row) for row in rows}
    counts = {s: sum(1 for u in states.values() if s in u) for s in STATES}
    tiles = "".join(
        f'<li class="tile state-{s}"><a href="/console?{urlencode({"state": s})}">'
        f'<span class="count" data-count="{s}">{counts[s]}</span> {s}</a></li>'
        for s in STATES
    )
    q, wanted = request.query.get("q", "").strip(), request.query.get("state", "")
    shown = [
        r for r in rows if (not q or q.lower() in r.unit.lower()) and (not wanted or wanted in states[r.unit])
    ]
    options = "".join(
        f'<option value="{s}"{" selected" if s == wanted else ""}>{s or "any state"}</option>'
        for s in ("", *STATES)
    )
    search = (
        '<form class="search" method="get" action="/console" role="search">'
        f'<label for="q">Unit</label><input id="q" name="q" value="{esc(q)}" placeholder="TRK-">'
        f'<label for="state">State</label><select id="state" name="state">{options}</select>'
        '<button type="submit">Filter</button></form>'
    )
    table = _table(
        f"{len(shown)} of {len(rows)} units"
        + (f", the first {MAX_ROWS} shown" if len(shown) > MAX_ROWS else ""),
        ("Unit", "State", "Connection", "Last seen", "Certificate ends", "Quarantine reason"),
        (
            (
                f'<a href="{_url("/console/units/" + r.unit)}">{esc(r.unit)}</a>',
                " ".join(f'<span class="badge state-{s}">{s}</span>' for s in sorted(states[r.unit])),
                "online" if r.online else "offline",
                esc(r.last_seen or "never"),
                esc(r.cert_not_after or "no certificate"),
                esc(r.quarantine_reason or ""),
            )
            for r in shown[:MAX_ROWS]
        ),
        "units",
    )
    body = f'<ul class="tiles" aria-label="Units by state">{tiles}</ul>{search}{table}{_event_feed(cc, who)}'
    return layout(cc, who, "Fleet", body, "/console")


def _event_feed(cc: ConsoleContext, who: Operator) -> str:
    since = max(0, cc.admin.audit.head()[0] - EVENT_REPLAY)  # the recent past first, then live
    return (
        '<section aria-labelledby="ev"><h2 id="ev">Live events</h2>'
        '<p class="note" id="ev-state" role="status">connecting…</p>'
        f'<ol id="events" class="events" aria-live="polite" data-stream="/console/events?since={since}">'
        "</ol></section>"
    )


# --- one unit ---------------------------------------------------------------------------------


def unit_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    unit = request.match_info["id"]
    found = cc.admin.ops.status(cc.admin.clock(), unit)
    if not found:
        raise NotFound(f"There is no unit {unit}.")
    row, rights, now = found[0], cc.rights(who), cc.admin.clock().timestamp()
    posture = cc.posture(unit)
    mode = _mode(row, posture)
    summary = _dl(
        {
            "Mode": f'<strong id="mode" data-mode="{esc(row.state)}">{esc(mode)}</strong>',
            "Identity": f"<code>{esc(f'spiffe://{cc.admin.trust_domain}/unit/{unit}')}</code>",
            "Registry state": esc(row.state),
            "Connection": ("online" if row.online else "offline")
            + (f" from {esc(row.address)}" if row.address else ""),
            "Last seen": esc(row.last_seen or "never"),
            "Posture": esc(posture or "no report"),
            "Quarantine": esc(
                f"since {row.quarantined_since} by {row.quarantined_by}: {row.quarantine_reason}"
                if row.quarantined_since
                else "not quarantined"
            ),
        }
    )
    body = (
        f'<section aria-labelledby="id"><h2 id="id">Identity and mode</h2>{summary}</section>'
        + _control(cc, unit, now)
        + _actions(cc, unit, row, rights)
        + _certificates(cc, unit)
        + _messages(cc, unit, "units.messages_pii" in rights)
        + _history(cc, unit)
    )
    return layout(cc, who, f"Unit {unit}", body)


def _dl(items: dict[str, str]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items.items()) + "</dl>"


def _control(cc: ConsoleContext, unit: str, now: float) -> str:
    traffic = cc.watch.traffic(unit)
    at = traffic.control_at if traffic else None
    text = "no control message seen since the gateway started"
    if traffic is not None and at is not None:
        text = (
            f'last control message <span data-since="{at:.3f}">{_ago(at, now)}</span>: '
            f"{esc(traffic.control_topic)} from {esc(traffic.control_sender)}"
        )
    live = _url(f"/console/units/{unit}/live")
    return (
        '<section aria-labelledby="ctl"><h2 id="ctl">Control channel</h2>'
        f'<p id="control" class="control" data-live="{live}"><span id="control-last">{text}</span>. '
        "Quarantine and posture restriction never touch it; only a revoke or a partner cut ends it."
        "</p></section>"
    )


def unit_live(cc: ConsoleContext, unit: str) -> dict[str, object] | None:
    """What the unit page refreshes every second without a reload: its state and control liveness."""
    found = cc.admin.ops.status(cc.admin.clock(), unit)
    if not found:
        return None
    traffic = cc.watch.traffic(unit)
    return {
        "state": found[0].state,
        "online": found[0].online,
        "control_at": traffic.control_at if traffic else None,
        "control_topic": traffic.control_topic if traffic else "",
        "control_sender": traffic.control_sender if traffic else "",
    }


def _actions(cc: ConsoleContext, unit: str, row: UnitStatus, rights: frozenset[str]) -> str:
    buttons = []
    if "units.quarantine" in rights and row.state not in ("quarantined", "revoked"):
        buttons.append(("quarantine", "Quarantine (diagnostic-only)", "units.quarantine"))
    if "units.release" in rights and row.state == "quarantined":
        buttons.append(("release", "Release", "units.release"))
    if not buttons:
        return ""
    totp = any(cc.needs_totp(right) for _, _, right in buttons)
    fields = ""
    if any(action == "quarantine" for action, _, _ in buttons):
        fields += (
            '<label for="reason">Reason (recorded in the audit log)</label>'
            '<input id="reason" name="reason" required maxlength="500" autocomplete="off">'
        )
    if totp:
        fields += (
            '<label for="totp">TOTP code from your authenticator</label>'
            '<input id="totp" name="totp" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" '
            'autocomplete="one-time-code" required>'
        )
    html_buttons = "".join(
        f'<button type="button" data-action="{action}" '
        f'data-url="{_url(f"/api/units/{unit}/{action}")}">{label}</button>'
        for action, label, _ in buttons
    )
    return (
        '<section aria-labelledby="act"><h2 id="act">Contain</h2>'
        f'<form class="action" data-unit-action>{fields}<div class="buttons">{html_buttons}</div>'
        '<p id="result" role="status" aria-live="polite"></p></form></section>'
    )


def _certificates(cc: ConsoleContext, unit: str) -> str:
    certs = cc.admin.registry.list_certificates("unit", unit)
    rows = [
        (
            f"{c.serial:x}",
            esc(c.status),
            esc(c.not_before.isoformat(timespec="seconds")),
            esc(c.not_after.isoformat(timespec="seconds")),
            f"renewed from {c.renewed_from:x}" if c.renewed_from else "first enrollment",
        )
        for c in reversed(certs)
    ]
    return (
        '<section aria-labelledby="cert"><h2 id="cert">Certificates and renewal lineage</h2>'
        + _table("newest first", ("Serial", "Status", "Valid from", "Valid until", "Lineage"), rows)
        + "</section>"
    )


def _messages(cc: ConsoleContext, unit: str, pii: bool) -> str:
    traffic = cc.watch.traffic(unit)
    classes = cc.engine.policy.context.data_classes
    rows = []
    for seen in reversed(traffic.messages if traffic else ()):
        text = seen.payload.decode("utf-8", "replace") if pii else redacted(seen.topic, seen.payload, classes)
        rows.append(
            (esc(_when(seen.at)), esc(seen.topic), esc(seen.sender), f"<code>{esc(text, 300)}</code>")
        )
    caption = "newest first" + ("" if pii else "; PII redacted for your role")
    return (
        '<section aria-labelledby="msg"><h2 id="msg">Last messages on its topics</h2>'
        + _table(caption, ("Time", "Topic", "From", "Payload"), rows, "messages")
        + "</section>"
    )


def recent_records(cc: ConsoleContext, window: int = HISTORY_WINDOW) -> list[AuditRecord]:
    head = cc.admin.audit.head()[0]
    return cc.admin.audit.records(since_seq=max(0, head - window), limit=window)


def _about(record: AuditRecord, unit: str) -> bool:
    name = f"unit/{unit}"
    return (
        record.subject in (name, unit) or record.actor == name or record.subject.startswith(f"fleet/{unit}/")
    )


def _history(cc: ConsoleContext, unit: str) -> str:
    records = [r for r in recent_records(cc) if _about(r, unit) and not r.action.startswith("admin.")]
    detectors = [r for r in records if r.action.startswith("detector.")]
    others = [r for r in records if not r.action.startswith("detector.")]
    return (
        '<section aria-labelledby="det"><h2 id="det">Detector history and evidence</h2>'
        + _records_table("newest first", detectors[::-1][:50])
        + '</section><section aria-labelledby="dec"><h2 id="dec">Recent decisions and denials</h2>'
        + _records_table("newest first", others[::-1][:50])
        + "</section>"
    )


def _records_table(caption: str, records: Sequence[AuditRecord]) -> str:
    rows = (
        (
            str(r.seq),
            esc(r.at[:19].replace("T", " ")),
            esc(r.actor),
            esc(r.action),
            esc(r.subject, 80),
            f'<span class="outcome-{esc(r.outcome)}">{esc(r.outcome)}</span>',
            esc(r.reason),
            f"<code>{esc(json.dumps(r.details, sort_keys=True), 400)}</code>" if r.details else "",
        )
        for r in records
    )
    return _table(caption, ("#", "Time", "Who", "Action", "Subject", "Outcome", "Reason", "Evidence"), rows)


# --- map --------------------------------------------------------------------------------------

MAP_W, MAP_H, MARGIN = 960.0, 600.0, 40.0


@dataclass(frozen=True)
class Frame:
    """An equirectangular frame fitted to the fleet's extent: north up, east right, metres alike."""

    lat0: float
    lon0: float
    mid: float  # cos(mean latitude): a degree of longitude is this much shorter than one of latitude
    scale: float  # SVG units per degree of latitude
    x0: float
    y0: float

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return self.x0 + (lon - self.lon0) * self.mid * self.scale, MAP_H - (
            self.y0 + (lat - self.lat0) * self.scale
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """(south, north, west, east) of the whole drawing."""
        south = self.lat0 - self.y0 / self.scale
        west = self.lon0 - self.x0 / (self.mid * self.scale)
        return south, south + MAP_H / self.scale, west, west + MAP_W / (self.mid * self.scale)


def frame(fixes: dict[str, Fix]) -> Frame | None:
    if not fixes:
        return None
    lats = [f.lat for f in fixes.values()]
    lons = [f.lon for f in fixes.values()]
    mid = max(math.cos(math.radians((max(lats) + min(lats)) / 2)), 0.01)
    width = max((max(lons) - min(lons)) * mid, 1e-3)
    height = max(max(lats) - min(lats), 1e-3)
    scale = min((MAP_W - 2 * MARGIN) / width, (MAP_H - 2 * MARGIN) / height)
    return Frame(min(lats), min(lons), mid, scale, (MAP_W - width * scale) / 2, (MAP_H - height * scale) / 2)


def project(fixes: dict[str, Fix]) -> dict[str, tuple[float, float]]:
    """Positions in the SVG box for each unit's fix."""
    box = frame(fixes)
    return {} if box is None else {unit: box.xy(f.lat, f.lon) for unit, f in fixes.items()}


GRID_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 45.0)


def graticule(box: Frame) -> str:
    """Parallels and meridians with their degrees, so the drawing has a scale without map tiles."""
    south, north, west, east = box.bounds()
    step = next((s for s in GRID_STEPS if (north - south) / s <= 8 and (east - west) / s <= 10), 90.0)
    lines = []
    for i in range(math.ceil(south / step), math.floor(north / step) + 1):
        lat = i * step
        y = box.xy(lat, west)[1]
        lines.append(
            f'<line class="grid" x1="0" y1="{y:.1f}" x2="{MAP_W:.0f}" y2="{y:.1f}"/>'
            f'<text class="grid" x="4" y="{y - 3:.1f}">'
            f"{round(abs(lat), 4):g}°{'N' if lat >= 0 else 'S'}</text>"
        )
    for i in range(math.ceil(west / step), math.floor(east / step) + 1):
        lon = i * step
        x = box.xy(south, lon)[0]
        lines.append(
            f'<line class="grid" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{MAP_H:.0f}"/>'
            f'<text class="grid" x="{x + 3:.1f}" y="{MAP_H - 4:.0f}">'
            f"{round(abs(lon), 4):g}°{'E' if lon >= 0 else 'W'}</text>"
        )
    return "".join(lines)


def map_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    rows = {r.unit: r for r in cc.admin.ops.status(cc.admin.clock())}
    fixes = {u: f for u, f in cc.watch.fixes().items() if u in rows}
    box = frame(fixes)
    points = project(fixes)
    marks = []
    for unit, (x, y) in sorted(points.items()):
        states = unit_states(cc, rows[unit])
        main = next((s for s in ("revoked", "quarantined", "restricted") if s in states), min(states))
        ring = f'<circle class="ring" cx="{x:.1f}" cy="{y:.1f}" r="14"/>' if "quarantined" in states else ""
        fix = fixes[unit]
        marks.append(
            f'<a href="{_url("/console/units/" + unit)}" aria-label="{esc(unit)}, {main}">{ring}'
            f'<circle class="unit state-{main}" cx="{x:.1f}" cy="{y:.1f}" r="7" data-unit="{esc(unit)}" '
            f'data-lat="{fix.lat}" data-lon="{fix.lon}"><title>{esc(unit)}: {main}</title></circle>'
            f'<text x="{x + 10:.1f}" y="{y + 4:.1f}">{esc(unit)}</text></a>'
        )
    svg = (
        f'<svg class="map" viewBox="0 0 {MAP_W:.0f} {MAP_H:.0f}" role="group" aria-labelledby="map-t">'
        f'<title id="map-t">Last known positions of {len(points)} units</title>'
        f'<rect class="sea" width="{MAP_W:.0f}" height="{MAP_H:.0f}"/>'
        f"{graticule(box) if box else ''}{''.join(marks)}</svg>"
    )
    legend = "".join(f'<li><span class="dot state-{s}"></span>{s}</li>' for s in STATES)
    table = _table(
        "positions (the map as a table)",
        ("Unit", "Latitude", "Longitude", "Fix"),
        (
            (
                f'<a href="{_url("/console/units/" + u)}">{esc(u)}</a>',
                f"{f.lat:.5f}",
                f"{f.lon:.5f}",
                _when(f.at),
            )
            for u, f in sorted(fixes.items())
        ),
    )
    missing = len(rows) - len(points)
    note = (
        f'<p class="note">{missing} unit(s) have sent no GPS fix since the gateway started.</p>'
        if missing
        else ""
    )
    body = f'<ul class="legend" aria-label="Legend">{legend}</ul>{svg}{note}{table}'
    return layout(cc, who, "Map", body, "/console/map")


# --- partners, audit, flows -------------------------------------------------------------------


def partners_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    rights = cc.rights(who)
    sessions = [
        s for s in cc.admin.sessions() if s.peer and s.peer.identity and s.peer.identity.kind == "partner"
    ]
    live: dict[str, int] = {}
    for s in sessions:
        assert s.peer is not None and s.peer.identity is not None
        if s.connected:
            live[s.peer.identity.id] = live.get(s.peer.identity.id, 0) + 1
    can_cut = "partners.disconnect" in rights
    rows = []
    for p in cc.admin.registry.list_identities("partner"):
        cut = ""
        if can_cut and p.state != "revoked":
            cut = (
                f'<button type="button" data-partner="{esc(p.id)}" '
                f'data-url="{_url(f"/api/partners/{p.id}/disconnect")}">Disconnect {esc(p.id)}…</button>'
            )
        rows.append((esc(p.id), esc(p.metadata.get("tier", "?")), esc(p.state), str(live.get(p.id, 0)), cut))
    views = cc.engine.policy.context.views
    tiers = (
        (str(t.tier), esc(", ".join(sorted(t.classes))), esc(", ".join(sorted(t.coarsen)) or "none"),
         "yes" if t.pseudonymise_units else "no")
        for t in (views.tiers.values() if views else ())
    )  # fmt: skip
    dialog = ""
    if can_cut:
        dialog = (
            '<section id="cut" class="cut" hidden aria-labelledby="cut-t">'
            '<h2 id="cut-t">Disconnect a partner</h2>'
            "<p>First the dry run: what the cut would revoke and close. "
            "Nothing changes until you confirm.</p>"
            '<label for="cut-totp">TOTP code</label><input id="cut-totp" inputmode="numeric" maxlength="6" '
            'autocomplete="one-time-code">'
            '<div class="buttons"><button type="button" id="cut-dry">Show blast radius</button>'
            '<button type="button" id="cut-go" class="danger" disabled>Disconnect now</button>'
            '<button type="button" id="cut-cancel">Cancel</button></div>'
            '<pre id="cut-result" role="status" aria-live="polite"></pre></section>'
        )
    body = (
        _table("partners", ("Partner", "Tier", "State", "Live sessions", "Action"), rows)
        + dialog
        + "<h2>Views by tier</h2>"
        + _table(
            "what each tier may see", ("Tier", "Data classes", "Coarsened", "Pseudonymised units"), tiers
        )
    )
    return layout(cc, who, "Partners", body, "/console/partners")


def audit_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    intact, checked, head = cc.chain.step(cc.admin.audit)
    full = "The full walk against the newest anchor: <code>fleetgate audit verify</code>."
    if not intact:
        chain = f'<p class="chain bad" role="alert">Hash chain broken: {esc(cc.chain.problem)}. {full}</p>'
    elif checked < head:
        chain = (
            f'<p class="chain ok" role="status">Hash chain intact so far: {checked} of {head} records '
            f"checked (more with each view). {full}</p>"
        )
    else:
        chain = (
            f'<p class="chain ok" role="status">Hash chain intact: {checked} records, head {head}. {full}</p>'
        )
    q = {k: request.query.get(k, "").strip() for k in ("action", "actor", "subject", "outcome")}
    records = [
        r
        for r in recent_records(cc)
        if q["action"] in r.action and q["actor"] in r.actor and q["subject"] in r.subject
        and (not q["outcome"] or r.outcome == q["outcome"])
    ]  # fmt: skip
    fields = "".join(
        f'<label for="f-{k}">{k.capitalize()}</label><input id="f-{k}" name="{k}" value="{esc(v)}">'
        for k, v in q.items()
    )
    form = (
        '<form class="search" method="get" action="/console/audit" role="search">'
        f'{fields}<button type="submit">Filter</button></form>'
    )
    body = (
        chain
        + form
        + _records_table(
            f"the newest {min(len(records), MAX_ROWS)} of {len(records)} matching records",
            records[::-1][:MAX_ROWS],
        )
    )
    return layout(cc, who, "Audit", body, "/console/audit")


def flows_page(request: web.Request, cc: ConsoleContext, who: Operator) -> str:
    if cc.admin.flows is None:
        raise NotFound("This gateway keeps no flow map.")
    rows = ([esc(c) for c in row] for row in table_rows(cc.admin.flows()))
    body = (
        '<img class="flows" src="/console/flows.svg" alt="The data-flow map: who sends which data '
        'class to whom; the same flows are listed in the table below.">'
        + _table(
            "flows (◀ marks the protect surface)",
            (
                "Group",
                "Action",
                "Topic",
                "Messages",
                "Rate /s",
                "Denied",
                "Identities",
                "Bytes",
                "Data classes",
            ),
            rows,
        )
    )
    return layout(cc, who, "Flows", body, "/console/flows")
