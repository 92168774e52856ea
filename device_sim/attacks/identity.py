"""Attacks on identity: a borrowed client id, revoked / expired / foreign / self-signed certificates,
and one certificate used from two places at once (a cloned unit).

Time to drop is measured from the attacker's first byte (the TCP connect) to the gateway's refusal
(a TLS alert, a refusing CONNACK, a connection closed before CONNACK); for the revoked unit, from the
moment the revocation was recorded to the moment its live session was cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from device_sim.attacks import forge
from device_sim.attacks.arena import Heard, Lab, ScenarioResult, describe_code, refusal_stage, watch
from device_sim.fleet.enroll import UnitFiles, certificate_serial, fleetgate
from device_sim.fleet.paho_loop import V5, V311, AsyncPaho
from device_sim.fleet.unit import MODE_DIAGNOSTIC


def _gone(client: AsyncPaho) -> Callable[[], bool]:
    return lambda: not client.connected


def _cut_at(client: AsyncPaho) -> list[float]:
    """Filled with the moment the gateway closed the connection (our own closes do not count)."""
    cut: list[float] = []

    def closed() -> None:
        if not client.closed_by_us:
            cut.append(time.monotonic())

    client.on_close = closed
    return cut


# --- client id spoofing ---------------------------------------------------------------------


async def client_id_spoof(lab: Lab) -> ScenarioResult:
    units = await lab.units("SPOOF", 2)
    (attacker, files), (victim, _) = sorted(units.items())
    before, mark = await lab.metrics(), lab.audit_mark()
    attempts = [(victim, V311), (victim, V5), (f"{victim}-X", V311), (f"{victim}-X", V5)]
    outcomes = []
    for client_id, version in attempts:
        client, outcome, _ = await lab.client(attacker, files, client_id=client_id, version=version)
        if outcome.accepted:
            await client.disconnect()
        label = f"{'5.0' if version == V5 else '3.1.1'} as {client_id}"
        outcomes.append((label, outcome))
    accepted = [label for label, o in outcomes if o.accepted]
    slowest = max(o.elapsed_ms for _, o in outcomes)
    what = (
        f"{len(outcomes) - len(accepted)} of {len(outcomes)} connections with {attacker}'s certificate "
        f"and another client id refused at CONNACK ("
        + "; ".join(sorted({o.detail for _, o in outcomes if not o.accepted}))
        + ")"
    )
    if accepted:
        what += f"; ACCEPTED: {', '.join(accepted)}"
    return ScenarioResult(
        "client-id-spoof",
        refused=not accepted,
        what_gateway_did=what,
        time_to_drop_ms=round(slowest, 1),
        details={
            "certificate": attacker,
            "attempts": {label: o.detail for label, o in outcomes},
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "connect", "refus"),
            "audit": dict(lab.audit_since(mark, attacker)),
        },
    )


# --- a certificate revoked while the unit is connected -----------------------------------------


async def revoked_cert(lab: Lab) -> ScenarioResult:
    unit_id, files = await lab.unit("REVOKED")
    before, mark = await lab.metrics(), lab.audit_mark()
    client, outcome, _ = await lab.client(unit_id, files, subscribe=(f"fleet/{unit_id}/control/#",))
    if not outcome.accepted:
        return ScenarioResult("revoked-cert", False, f"the unit could not connect before: {outcome.detail}")
    cut = _cut_at(client)
    serial = format(certificate_serial(files), "x")
    fleetgate(lab.target.data, "cert", "revoke", serial, "--force", "--reason", "keyCompromise")
    revoked_at = time.monotonic()  # the registry has it: from here on the clock is the gateway's
    await watch(lambda: not client.connected, lab.options.watch_seconds)
    drop_ms = round((cut[0] - revoked_at) * 1000.0, 1) if cut else None
    if client.connected:
        await client.disconnect()
    again, again_outcome, _ = await lab.client(unit_id, files)
    if again_outcome.accepted:
        await again.disconnect()
    await asyncio.sleep(0.6)  # metrics and audit are drained every 250 ms
    moved = Lab.changed(before, await lab.metrics(), "refus", "revok", "disconnect")
    stage = refusal_stage(moved)
    parts = [
        f"live session cut {drop_ms:.0f} ms after the revocation (DISCONNECT "
        f"{describe_code(client.disconnect_code)})"
        if drop_ms is not None
        else f"live session NOT cut within {lab.options.watch_seconds:g} s",
        "reconnect ACCEPTED"
        if again_outcome.accepted
        else f"reconnect refused {stage or ''}; the client saw: {again_outcome.detail}",
    ]
    return ScenarioResult(
        "revoked-cert",
        refused=drop_ms is not None and not again_outcome.accepted,
        what_gateway_did="; ".join(parts),
        time_to_drop_ms=drop_ms,
        time_to_contain_ms=drop_ms,
        details={
            "unit": unit_id,
            "serial": serial,
            "reconnect": again_outcome.detail,
            "gateway_metrics": moved,
            "audit": dict(lab.audit_since(mark, unit_id, serial)),
        },
    )


# --- certificates the gateway must not verify ---------------------------------------------------

Forger = Callable[[Path, Path, str, datetime], UnitFiles]


async def _untrusted(lab: Lab, name: str, label: str, make: Forger, meaning: str) -> ScenarioResult:
    unit_id, _ = await lab.unit(label)  # a real unit: the forged certificate claims its identity
    forged = make(lab.target.data, lab.work / "forged", unit_id, datetime.now(UTC))
    before, mark = await lab.metrics(), lab.audit_mark()
    client, outcome, _ = await lab.client(unit_id, forged, subscribe=(f"fleet/{unit_id}/#",))
    if outcome.accepted:
        await client.disconnect()
    await asyncio.sleep(0.6)  # the gateway drains its events to metrics and audit every 250 ms
    moved = Lab.changed(before, await lab.metrics(), "handshake", "refus")
    if outcome.accepted:
        what = f"ACCEPTED {meaning} for {unit_id}"
    else:
        stage = refusal_stage(moved) or "before MQTT"
        seen = f"{outcome.detail}, {outcome.elapsed_ms:.0f} ms after connecting"
        what = f"refused {stage}; the client saw: {seen}"
    return ScenarioResult(
        name,
        refused=not outcome.accepted,
        what_gateway_did=what,
        time_to_drop_ms=round(outcome.elapsed_ms, 1),
        details={
            "claimed_unit": unit_id,
            "certificate": str(forged.cert),
            "gateway_metrics": moved,
            "audit": dict(lab.audit_since(mark, "tls.handshake")),
        },
    )


async def expired_cert(lab: Lab) -> ScenarioResult:
    meaning = "a certificate that expired a day ago"
    return await _untrusted(lab, "expired-cert", "EXPIRED", forge.expired, meaning)


async def foreign_cert(lab: Lab) -> ScenarioResult:
    return await _untrusted(lab, "foreign-cert", "FOREIGN", forge.foreign, "a certificate from a foreign CA")


async def self_signed(lab: Lab) -> ScenarioResult:
    return await _untrusted(lab, "self-signed", "SELFSIGNED", forge.self_signed, "a self-signed certificate")


# --- a cloned unit ------------------------------------------------------------------------------

CLONE_ROUNDS = 4


async def cloned_unit(lab: Lab) -> ScenarioResult:
    """The same certificate and key from two connections, each reconnecting when cut."""
    unit_id, files = await lab.unit("CLONE")
    before, mark = await lab.metrics(), lab.audit_mark()
    live: tuple[AsyncPaho, list[float]] | None = None
    takeovers: list[float] = []
    codes: list[int | None] = []
    both_live = 0
    refused: list[str] = []
    refused_at: float | None = None
    started = time.monotonic()
    for _ in range(CLONE_ROUNDS):  # original, clone, original, clone: each connect should cut the other
        attempt_at = time.monotonic()
        client, outcome, _ = await lab.client(unit_id, files, subscribe=(f"fleet/{unit_id}/cmd/#",))
        if not outcome.accepted:
            refused.append(outcome.detail)
            refused_at = refused_at or time.monotonic()
            continue
        if live is not None:
            previous, previous_cut = live
            if await watch(_gone(previous), 2.0):
                cut_at = previous_cut[0] if previous_cut else time.monotonic()
                takeovers.append((cut_at - attempt_at) * 1000.0)  # from the clone's first byte
                codes.append(previous.disconnect_code)
            else:
                both_live += 1
        live = (client, _cut_at(client))
    heard = Heard()
    if live is not None:
        last = live[0]
        last.on_message = heard
        await watch(lambda: heard.mode == MODE_DIAGNOSTIC or not last.connected, lab.options.watch_seconds)
        if last.connected:
            await last.disconnect()
    audit = lab.audit_since(mark, unit_id)
    flagged = {k: n for k, n in audit.items() if "clon" in k or "takeover" in k or "taken" in k}
    expected = CLONE_ROUNDS - 1 - len(refused)
    parts = [
        f"one live session per identity: {len(takeovers)} of {expected} reconnects took the session over "
        f"(the other was cut with DISCONNECT {', '.join(sorted({describe_code(c) for c in codes})) or '-'}"
        + (f", at most {max(takeovers):.0f} ms after the clone started connecting)" if takeovers else ")"),
    ]
    if both_live:
        parts.append(f"BOTH connections stayed live {both_live} time(s)")
    if refused:
        parts.append(f"{len(refused)} connect(s) refused ({refused[-1]}) — a cloning response")
    if heard.mode == MODE_DIAGNOSTIC:
        parts.append("the unit was quarantined")
    parts.append(
        f"audited as possible cloning ({sum(flagged.values())} record(s))" if flagged else "no cloning record"
    )
    return ScenarioResult(
        "cloned-unit",
        refused=both_live == 0 and (len(takeovers) == expected or bool(refused)),
        what_gateway_did="; ".join(parts),
        time_to_drop_ms=round(max(takeovers), 1) if takeovers else None,
        time_to_contain_ms=round((refused_at - started) * 1000.0, 1) if refused_at else None,
        details={
            "unit": unit_id,
            "takeover_ms": [round(t, 1) for t in takeovers],
            "refused_connects": refused,
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "clon", "takeover", "detector"),
            "audit": dict(audit),
        },
    )
