"""Drills with the whole fleet: the reconnect storm after a cellular outage.

Not an attack but the load a gateway must survive without refusing anyone: every unit loses its
connection in the same instant (no DISCONNECT, so every will fires) and comes back in the same
instant when coverage returns. The gateway holds if every unit is back, nobody is refused, and a
control message still makes its round trip while the storm lands.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from device_sim.attacks.arena import Lab, ScenarioResult
from device_sim.fleet.dispatch import ControlResult, Dispatch
from device_sim.fleet.runner import Fleet, FleetConfig


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _control_during_storm(fleet: Fleet, dispatch: Dispatch) -> ControlResult | None:
    """A control message to the first unit that is back, while the rest of the fleet lands."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        back = [unit for unit in fleet.units.values() if unit.ready]
        if back:
            return await dispatch.send_control(back[0].unit_id, "ping", timeout=5.0)
        await asyncio.sleep(0.01)
    return None


async def reconnect_storm(lab: Lab) -> ScenarioResult:
    opts = lab.options
    units = await lab.units("STORM", opts.storm_units)
    dispatch = await lab.dispatch()
    wills: list[str] = []

    def on_state(topic: str, payload: bytes) -> None:
        if topic.endswith("/state") and topic.split("/")[1] in units:
            try:
                if json.loads(payload).get("online") is False:
                    wills.append(topic)
            except (ValueError, AttributeError):
                return

    dispatch.listeners.append(on_state)
    before, mark = await lab.metrics(), lab.audit_mark()
    config = FleetConfig(host=lab.target.host, port=lab.target.port, protocol="mixed", seed=opts.seed)
    async with Fleet(config, units) as fleet:
        first = await fleet.wait_online(timeout=30.0)
        connects_before = fleet.totals().connects
        failures_before = fleet.totals().connect_failures
        await fleet.outage(opts.outage_seconds)
        back_at = time.monotonic()
        probe = asyncio.create_task(_control_during_storm(fleet, dispatch))
        online = await fleet.wait_online(timeout=30.0)
        recovered_ms = round((time.monotonic() - back_at) * 1000.0, 1)
        control = await probe
        await asyncio.sleep(0.3)
        totals = fleet.totals()
        # Each unit's connect-time samples end with this reconnect.
        samples = [u.stats.connect_ms[-1] for u in fleet.units.values() if u.stats.connects >= 2]
        protocols = dict(fleet.by_protocol())
    await dispatch.stop()
    refused = totals.connect_failures - failures_before
    ack_ms = control.ack_ms if control is not None else None
    n = len(units)
    connack = (
        f"time to CONNACK p50 {statistics.median(samples):.0f} ms, p95 {_percentile(samples, 0.95):.0f} ms, "
        f"max {max(samples):.0f} ms"
        if samples
        else "no reconnect samples"
    )
    what = (
        f"{online} of {n} units back {recovered_ms / 1000:.2f} s after coverage returned ({connack}); "
        f"{len(set(wills))} of {n} wills delivered; {refused} connect(s) refused; control round trip "
        + (f"{ack_ms:.0f} ms during the storm" if ack_ms is not None else "LOST during the storm")
    )
    return ScenarioResult(
        "reconnect-storm",
        refused=online < n or refused > 0,
        what_gateway_did=what,
        attack=False,
        details={
            "units": n,
            "protocols": protocols,
            "online_before": first,
            "online_after": online,
            "time_to_reconnect_all_ms": recovered_ms,
            "reconnects": totals.connects - connects_before,
            "connects_refused": refused,
            "last_refusal": totals.last_failure or None,
            "wills_delivered": len(set(wills)),
            "control_round_trip_ms": ack_ms,
            "gateway_metrics": Lab.changed(before, await lab.metrics(), "connect", "handshake", "detector"),
            "audit": {k: v for k, v in lab.audit_since(mark, "STORM").items() if "ok" not in k.split()},
        },
    )
