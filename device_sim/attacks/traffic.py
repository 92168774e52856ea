"""Attacks by a unit with a valid certificate that misbehaves: flood, topic escape, impossible travel.

Each one measures from the attacker's first packet: when the gateway first said no (a refusing
PUBACK/SUBACK, or cutting the connection: time to drop) and when it contained the unit (a retained
`diagnostic-only` mode command, or a certificate that no longer connects: time to contain). An
attacker that is cut reconnects and carries on, as compromised firmware would; after the attack it
reconnects once more to see what the gateway left it with (full rights, quarantine, or nothing).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from device_sim.attacks.arena import Heard, Lab, ScenarioResult, describe_code, watch
from device_sim.attacks.attacker import Attacker
from device_sim.fleet.route import Point, bearing_deg, destination, distance_km
from device_sim.fleet.unit import ROTTERDAM

WINDOW = 100  # unacknowledged QoS 1 publishes the flooder keeps in flight (the gateway's receive maximum)


def _since(start: float, at: float | None) -> float | None:
    return None if at is None else round((at - start) * 1000.0, 1)


def _first(*moments: float | None) -> float | None:
    return min((t for t in moments if t is not None), default=None)


def _containment(heard: Heard, start: float, quarantined: bool, waited: float, comeback: str) -> str:
    if heard.quarantined_at is not None:
        return f"quarantined (diagnostic-only) {(heard.quarantined_at - start):.2f} s after the attack began"
    if comeback:
        return comeback
    return "quarantined" if quarantined else f"no quarantine within {waited:g} s"


# --- flood ----------------------------------------------------------------------------------


async def flood(lab: Lab) -> ScenarioResult:
    opts = lab.options
    unit_id, files = await lab.unit("FLOOD")
    dispatch = await lab.dispatch()
    before, mark = await lab.metrics(), lab.audit_mark()
    attacker = Attacker(lab, unit_id, files)
    outcome = await attacker.connect()
    if not outcome.accepted:
        await dispatch.stop()
        return ScenarioResult("flood", True, f"the flooder could not connect: {outcome.detail}")
    topic = f"fleet/{unit_id}/telemetry/gps"
    payload = json.dumps({"lat": ROTTERDAM.lat, "lon": ROTTERDAM.lon, "ts": 0, "speed_kmh": 0}).encode()
    started = time.monotonic()
    sent = await _pump(attacker, topic, payload, opts.flood_messages, started + opts.flood_seconds)
    flood_s = time.monotonic() - started
    await attacker.settle()
    # The bucket refills for as long as the gateway is handling the flood, which ends when the last
    # PUBLISH was answered, a little after the last one was sent: that is the window to allow for.
    handled_s = time.monotonic() - started
    heard = attacker.heard
    await watch(lambda: heard.quarantined_at is not None, opts.watch_seconds)
    await asyncio.sleep(0.3)  # the last deliveries reach dispatch
    delivered = dispatch.unit(unit_id).telemetry["gps"]
    comeback, quarantined = await attacker.finish()
    await dispatch.stop()
    allowance = opts.unit_burst + opts.unit_rate * handled_s
    beyond = max(0, delivered - int(allowance))
    acks = attacker.acks
    parts = [
        f"{delivered:,} of {sent:,} delivered in {flood_s:.1f} s "
        f"({beyond:,} beyond the {opts.unit_rate:g}/s + {opts.unit_burst} burst limit)"
    ]
    parts += [f"{n:,} PUBACK {describe_code(code)}" for code, n in sorted(acks.codes.items()) if code >= 0x80]
    parts.append(attacker.cut_text(started))
    parts.append(_containment(heard, started, quarantined, opts.watch_seconds, comeback))
    return ScenarioResult(
        "flood",
        refused=delivered < sent and beyond == 0,
        what_gateway_did="; ".join(p for p in parts if p),
        time_to_drop_ms=_since(started, _first(acks.first_refusal, attacker.first_cut)),
        time_to_contain_ms=_since(started, heard.quarantined_at),
        details={
            "unit": unit_id,
            "sent": sent,
            "delivered": delivered,
            "beyond_limit": beyond,
            "puback": {describe_code(c): n for c, n in acks.codes.items()},
            "cuts": [describe_code(code) for _, code in attacker.cuts],
            "after_attack": comeback,
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "decision", "drop", "detector"),
            "audit": dict(lab.audit_since(mark, unit_id)),
        },
    )


async def _pump(attacker: Attacker, topic: str, payload: bytes, count: int, deadline: float) -> int:
    """Publish as fast as the window allows, until `count`, the deadline, or the connection ends.

    A flooder that is cut does not come back within the flood: how fast the gateway cut it is the
    measurement, and a reconnect loop would only measure our backoff.
    """
    sent = 0
    while sent < count and time.monotonic() < deadline and attacker.connected:
        if len(attacker.acks.pending) >= WINDOW:
            await asyncio.sleep(0.001)
            continue
        if attacker.publish(topic, payload) is None:
            break
        sent += 1
        if sent % 25 == 0:
            await asyncio.sleep(0)  # let acks in
    return sent


# --- topic escape ---------------------------------------------------------------------------

ESCAPE_FILTERS = (
    "fleet/{victim}/telemetry/#",
    "fleet/+/telemetry/#",
    "#",
    "$SYS/#",
    "fleet/{victim}/control/#",
)


async def topic_escape(lab: Lab) -> ScenarioResult:
    units = await lab.units("ESCAPE", 2)
    (attacker_id, a_files), (victim, v_files) = sorted(units.items())
    dispatch = await lab.dispatch()
    forged: list[str] = []
    dispatch.listeners.append(lambda topic, payload: forged.append(topic) if b'"forged"' in payload else None)
    victim_heard = Heard()
    v_client, _, _ = await lab.client(
        victim, v_files, subscribe=(f"fleet/{victim}/cmd/#", f"fleet/{victim}/control/#")
    )
    v_client.on_message = victim_heard
    before, mark = await lab.metrics(), lab.audit_mark()
    attacker = Attacker(lab, attacker_id, a_files)
    outcome = await attacker.connect()
    if not outcome.accepted:
        return ScenarioResult("topic-escape", True, f"the attacker could not connect: {outcome.detail}")
    started = time.monotonic()
    subscribed = await _try_subscriptions(attacker, victim)
    first_sub_refusal = next((t for _, code, t in subscribed if code is None or code >= 0x80), None)
    for n in range(3):  # the victim's real telemetry: does any of it leak to the attacker?
        v_client.publish(f"fleet/{victim}/telemetry/gps", json.dumps({"seq": n}).encode(), 1)
    published = await _try_publishes(attacker, victim)
    await asyncio.sleep(0.5)
    leaked = attacker.heard.on(f"fleet/{victim}/")
    forged_at_victim = sum(1 for _, _, p in victim_heard.messages if b'"forged"' in p)
    comeback, quarantined = await attacker.finish()
    if v_client.connected:
        await v_client.disconnect()
    await dispatch.stop()
    granted = [f for f, code, _ in subscribed if code is not None and code < 0x80]
    refused_pubs = sum(1 for _, c in published if c is not None and c >= 0x80)
    unsent = sum(1 for _, c in published if c is None)
    refused_codes = {describe_code(c) for _, c in published if c is not None and c >= 0x80}
    delivered = len(forged) + forged_at_victim
    parts = [
        f"{len(subscribed) - len(granted)} of {len(subscribed)} subscriptions refused"
        + (f" (GRANTED: {', '.join(granted)})" if granted else ""),
        f"{refused_pubs} of {len(published)} publishes to the victim's topics and $SYS refused"
        + (f" (PUBACK {', '.join(sorted(refused_codes))})" if refused_codes else "")
        + (f", {unsent} not answered (connection cut)" if unsent else ""),
        f"{delivered} forged message(s) delivered, {leaked} of the victim's message(s) leaked",
        attacker.cut_text(started),
        comeback if (attacker.cuts or quarantined or "refused" in comeback) else "",
    ]
    return ScenarioResult(
        "topic-escape",
        refused=not granted and delivered == 0 and leaked == 0,
        what_gateway_did="; ".join(p for p in parts if p),
        time_to_drop_ms=_since(
            started, _first(first_sub_refusal, attacker.acks.first_refusal, attacker.first_cut)
        ),
        time_to_contain_ms=_since(started, attacker.heard.quarantined_at),
        details={
            "attacker": attacker_id,
            "victim": victim,
            "subscribe": {f: describe_code(code) if code is not None else "cut" for f, code, _ in subscribed},
            "publish": {
                topic: describe_code(code) if code is not None else "cut" for topic, code in published
            },
            "forged_delivered": delivered,
            "victim_messages_leaked": leaked,
            "cuts": [describe_code(code) for _, code in attacker.cuts],
            "after_attack": comeback,
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "decision", "detector"),
            "audit": dict(lab.audit_since(mark, attacker_id)),
        },
    )


async def _try_subscriptions(attacker: Attacker, victim: str) -> list[tuple[str, int | None, float]]:
    out: list[tuple[str, int | None, float]] = []
    for template in ESCAPE_FILTERS:
        topic_filter = template.format(victim=victim)
        code: int | None = None
        if await attacker.ensure() and attacker.client is not None:
            try:
                [code] = await attacker.client.subscribe([(topic_filter, 1)], timeout=3.0)
            except (ConnectionError, TimeoutError):
                code = None  # cut off before an answer
        out.append((topic_filter, code, time.monotonic()))
    return out


async def _try_publishes(attacker: Attacker, victim: str) -> list[tuple[str, int | None]]:
    attempts = [
        (f"fleet/{victim}/telemetry/gps", {"lat": 0.0, "lon": 0.0, "ts": time.time(), "forged": True}),
        (f"fleet/{victim}/control/brake", {"id": "forged-1", "action": "full-stop", "forged": True}),
        (f"fleet/{victim}/cmd/mode", {"mode": "normal", "forged": True}),
        (f"fleet/{victim}/state", {"online": False, "forged": True}),
        ("$SYS/broker/clients/connected", {"forged": True}),
    ]
    mids: list[tuple[str, int | None]] = []
    for topic, body in attempts:
        mid = attacker.publish(topic, json.dumps(body).encode()) if await attacker.ensure() else None
        mids.append((topic, mid))
    await attacker.settle(3.0)
    return [(topic, attacker.acks.by_mid.get(mid) if mid is not None else None) for topic, mid in mids]


# --- impossible travel ----------------------------------------------------------------------

JUMP_KM = 900.0


async def impossible_travel(lab: Lab) -> ScenarioResult:
    opts = lab.options
    unit_id, files = await lab.unit("TRAVEL")
    dispatch = await lab.dispatch()
    jumps: list[bytes] = []
    dispatch.listeners.append(lambda topic, payload: jumps.append(payload) if b'"jump"' in payload else None)
    before, mark = await lab.metrics(), lab.audit_mark()
    attacker = Attacker(lab, unit_id, files)
    outcome = await attacker.connect()
    if not outcome.accepted:
        return ScenarioResult("impossible-travel", True, f"the unit could not connect: {outcome.detail}")
    topic = f"fleet/{unit_id}/telemetry/gps"
    fixes = travel_fixes(time.time(), ROTTERDAM)
    for fix in fixes[:-1]:  # two honest fixes a second apart (reported a minute late: buffered)
        attacker.publish(topic, json.dumps(fix).encode())
        await asyncio.sleep(1.0)
    started = time.monotonic()
    jump_mid = attacker.publish(topic, json.dumps(fixes[-1]).encode())
    await attacker.settle()
    heard = attacker.heard
    await watch(lambda: heard.quarantined_at is not None or not attacker.connected, opts.watch_seconds)
    await asyncio.sleep(0.3)
    jump_code = attacker.acks.by_mid.get(jump_mid) if jump_mid is not None else None
    comeback, quarantined = await attacker.finish()
    await dispatch.stop()
    span_s = fixes[-1]["ts"] - fixes[-2]["ts"]
    km = distance_km(Point(fixes[-2]["lat"], fixes[-2]["lon"]), Point(fixes[-1]["lat"], fixes[-1]["lon"]))
    implied = km / (span_s / 3600.0)
    delivered = len(jumps) > 0
    contained = quarantined or heard.quarantined_at is not None or "refused" in comeback
    parts = [
        f"the {km:,.0f} km jump in {span_s:.0f} s ({implied:,.0f} km/h) was "
        + ("delivered to dispatch" if delivered else "not delivered")
        + f" (PUBACK {describe_code(jump_code)})",
        attacker.cut_text(started),
        _containment(heard, started, quarantined, opts.watch_seconds, comeback),
    ]
    what = "; ".join(p for p in parts if p)
    return ScenarioResult(
        "impossible-travel",
        refused=contained,
        what_gateway_did=what if contained else "not contained: " + what,
        time_to_drop_ms=_since(started, _first(attacker.first_cut, attacker.acks.first_refusal)),
        time_to_contain_ms=_since(started, heard.quarantined_at),
        details={
            "unit": unit_id,
            "jump_km": round(km, 1),
            "implied_kmh": round(implied),
            "jump_delivered": delivered,
            "after_attack": comeback,
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "detector", "quarantin", "decision"),
            "audit": dict(lab.audit_since(mark, unit_id)),
        },
    )


def travel_fixes(now: float, start: Point) -> list[dict[str, Any]]:
    """Two plausible fixes (25 m apart, 1 s apart, at 90 km/h) then one 900 km away 61 s later.

    The honest fixes carry timestamps a minute old (a unit flushing its buffer after a dead spot), so
    the jump's own timestamp is `now` + 2 s, when it is sent: the implied speed is absurd both by
    payload time and by arrival time, whichever a detector uses.
    """
    heading = 90.0
    second = destination(start, heading, 0.025)
    far = destination(second, heading, JUMP_KM)
    base = now - 60.0
    fixes = [
        {"lat": start.lat, "lon": start.lon, "ts": base, "speed_kmh": 90.0, "heading": heading},
        {"lat": second.lat, "lon": second.lon, "ts": base + 1.0, "speed_kmh": 90.0, "heading": heading},
        {
            "lat": far.lat,
            "lon": far.lon,
            "ts": base + 62.0,
            "speed_kmh": 90.0,
            "heading": round(bearing_deg(second, far), 1),
            "jump": True,
        },
    ]
    return [{k: round(v, 6) if isinstance(v, float) else v for k, v in fix.items()} for fix in fixes]
