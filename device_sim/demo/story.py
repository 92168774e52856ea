"""The demo's story, told against a running gateway: enroll, drive, compromise, contain, summarize.

    3. a fleet enrolls over EST (keys made on each unit) and connects, half MQTT 3.1.1, half 5.0
    4. it drives: GPS, engine, fuel, diagnostics; dispatch sends control messages and gets acks
    5. one unit is compromised: it probes other units' topics and floods
    6. the gateway contains it: `fleetgate unit quarantine` when this gateway has it, else its detectors;
       failing both, its refusals and cut sessions are all there is, and the summary says so
    7. while contained, dispatch's control messages to the unit and the unit's acks still flow
    8. a summary a person can read in thirty seconds

Everything observed comes from the wire and from dispatch/ops subscriptions, never from inside the
gateway process.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from device_sim.attacks.arena import describe_code, watch
from device_sim.demo.summary import summary_table
from device_sim.fleet.dispatch import ControlResult, Dispatch
from device_sim.fleet.enroll import UnitFiles, enroll_fleet, fleetgate, register_units, unit_ids
from device_sim.fleet.paho_loop import V5, AsyncPaho, tls_context
from device_sim.fleet.runner import Fleet, FleetConfig, SimUnit
from device_sim.fleet.unit import MODE_DIAGNOSTIC, Outgoing, UnitProfile

FLOOD_WINDOW = 100
DETECTOR_GRACE = 2.0  # seconds a detector gets to quarantine the unit before ops does it by hand


@dataclass(frozen=True)
class DemoOptions:
    data: Path
    mqtt_port: int
    https_port: int
    units: int = 50
    seconds: float = 30.0
    seed: int = 1
    quarantine: bool = False  # this gateway has `fleetgate unit quarantine`
    flood_messages: int = 3000
    flood_seconds: float = 3.0
    contain_wait: float = 8.0  # seconds to wait for quarantine to reach the unit
    controls: int = 3  # control messages sent to the contained unit

    @property
    def est_url(self) -> str:
        return f"https://localhost:{self.https_port}"


def quarantine_available() -> bool:
    from gateway.cli import cli

    unit = getattr(cli, "commands", {}).get("unit")
    return "quarantine" in getattr(unit, "commands", {})


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


class Story:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.o = options
        self.console = console
        self.summary: dict[str, Any] = {}
        self.rng = random.Random(f"demo:{options.seed}")
        self.ops_files: UnitFiles | None = None

    def say(self, text: str) -> None:
        self.console.print(text)

    async def run(self) -> dict[str, Any]:
        o = self.o
        files = await self.enroll()
        dispatch = Dispatch(self._service("service", "dispatch"), "localhost", o.mqtt_port)
        await dispatch.start()
        self.ops_files = self._service("operator", "ops")
        ops = Dispatch(self.ops_files, "localhost", o.mqtt_port, name="ops")
        await ops.start(("fleet/+/diag/#",))
        # Diagnostics every 10 s instead of 60, so the demo shows them flowing.
        config = FleetConfig(
            port=o.mqtt_port, est_url=o.est_url, seed=o.seed, profile=UnitProfile(diag_interval=10.0)
        )
        try:
            async with Fleet(config, files) as fleet:
                await self.connect(fleet)
                await self.drive(fleet, dispatch)
                bad, victim = self.pick(fleet)
                diag_at_attack = ops.unit(bad).diag
                attack = await self.compromise(fleet.units[bad], fleet.units[victim], dispatch)
                await self.contain(fleet.units[bad], dispatch, ops, attack, diag_at_attack)
                if self.summary["containment"]["quarantined"] and o.quarantine:
                    await self.release(fleet.units[bad], dispatch)
                self.summary["spoof"] = await self.spoof(files, bad, victim)
                self.summary["telemetry_delivered"] = dispatch.telemetry_total
                self.summary["messages_sent"] = fleet.totals().sent
        finally:
            await dispatch.stop()
            await ops.stop()
        self.render()
        return self.summary

    # --- 3. enrollment -------------------------------------------------------------------------

    async def enroll(self) -> dict[str, UnitFiles]:
        o = self.o
        ids = unit_ids(o.units)
        started = time.monotonic()
        tokens = register_units(o.data, ids)
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(
            None,
            lambda: enroll_fleet(
                o.est_url,
                o.data / "ca" / "root.crt",
                tokens,
                o.data / "sim" / "units",
                progress=True,
                console=self.console,
            ),
        )
        seconds = time.monotonic() - started
        self.summary["enrolled"] = len(files)
        self.summary["enroll_seconds"] = round(seconds, 2)
        self.say(
            f"3. {len(files)} units registered and enrolled over EST in {seconds:.1f} s "
            "(each made its own key)"
        )
        return files

    def _service(self, kind: str, name: str) -> UnitFiles:
        out = self.o.data / "sim" / kind
        fleetgate(self.o.data, kind, "add", name, "--out", str(out))
        return UnitFiles(out / f"{name}.crt", out / f"{name}.key", out / "ca.crt")

    # --- 4. driving ----------------------------------------------------------------------------

    async def connect(self, fleet: Fleet) -> None:
        online = await fleet.wait_online(timeout=30.0 + len(fleet.units) / 10)
        mix = fleet.by_protocol()
        self.summary["connected"] = online
        self.summary["protocols"] = dict(mix)
        self.say(
            f"4. {online} of {len(fleet.units)} units connected over mTLS "
            f"({mix.get('3.1.1', 0)} MQTT 3.1.1, {mix.get('5.0', 0)} MQTT 5.0) and driving"
        )

    async def drive(self, fleet: Fleet, dispatch: Dispatch) -> None:
        ids = sorted(fleet.units)
        controls: list[ControlResult] = []
        pending: set[asyncio.Task[ControlResult]] = set()
        with Progress(
            TextColumn("   [bold]{task.description}"),
            BarColumn(),
            TimeRemainingColumn(),
            console=self.console,
        ) as bar:
            task = bar.add_task("driving", total=self.o.seconds)
            started = time.monotonic()
            next_control = started + 1.0
            while (elapsed := time.monotonic() - started) < self.o.seconds:
                if time.monotonic() >= next_control:  # dispatch talks to a truck every two seconds
                    unit = self.rng.choice(ids)
                    job = asyncio.create_task(dispatch.send_control(unit, "speed-limit", {"kmh": 80}))
                    pending.add(job)
                    job.add_done_callback(pending.discard)
                    job.add_done_callback(lambda t: controls.append(t.result()))
                    next_control += 2.0
                bar.update(
                    task,
                    completed=elapsed,
                    description=f"driving: {fleet.online} online, {dispatch.telemetry_total:,} telemetry "
                    f"delivered, {sum(1 for c in controls if c.delivered)} control acks",
                )
                await asyncio.sleep(0.25)
            bar.update(task, completed=self.o.seconds)
        if pending:
            await asyncio.wait(pending, timeout=6.0)
        rtts = [c.ack_ms for c in controls if c.ack_ms is not None]
        self.summary["controls_sent"] = len(controls)
        self.summary["controls_acked"] = len(rtts)
        self.summary["control_rtt_ms"] = _median(rtts)
        self.summary["telemetry_while_driving"] = dispatch.telemetry_total

    # --- 5. compromise ---------------------------------------------------------------------------

    def pick(self, fleet: Fleet) -> tuple[str, str]:
        """The compromised unit speaks MQTT 5.0, so every refusal has a visible reason code."""
        v5 = [u for u in sorted(fleet.units) if fleet.units[u].protocol == "5.0"]
        bad = v5[len(v5) // 2] if v5 else sorted(fleet.units)[0]
        victim = next(u for u in sorted(fleet.units) if u != bad)
        return bad, victim

    async def compromise(self, unit: SimUnit, victim: SimUnit, dispatch: Dispatch) -> dict[str, Any]:
        self.say(f"5. [bold red]{unit.unit_id} is compromised[/]: it probes other units' topics, then floods")
        cut: list[tuple[float, int | None]] = []  # every time the gateway cut it, across its reconnects

        watched: list[AsyncPaho] = []

        async def connected() -> AsyncPaho | None:
            # Compromised firmware keeps the unit's reconnect logic: after a cut it is back within a second.
            await watch(lambda: unit.ready, 10.0)
            client = unit.client
            if client is not None and not any(c is client for c in watched):
                _watch_cut(client, cut)
                watched.append(client)
            return client

        client = await connected()
        if client is None:
            return {"error": "the unit was not connected"}
        started, wall = time.monotonic(), time.time()
        before = (unit.stats.sent, unit.stats.refused, dispatch.unit(unit.unit_id).total)
        subscribed = await _probe_subscriptions(connected, victim.unit_id)
        await connected()
        forged = [
            Outgoing(f"fleet/{victim.unit_id}/control/brake", b'{"id":"x","action":"full-stop","forged":1}'),
            Outgoing(f"fleet/{victim.unit_id}/telemetry/gps", b'{"lat":0,"lon":0,"forged":1}'),
        ]
        for message in forged:
            unit.publish(message)
        await asyncio.sleep(0.3)
        await connected()
        flood_started = time.monotonic()
        sent = await _flood(unit, self.o.flood_messages, flood_started + self.o.flood_seconds)
        flood_seconds = time.monotonic() - flood_started
        await watch(lambda: unit.in_flight == 0 or not unit.online, 2.0)
        await asyncio.sleep(0.5)
        refused_subs = [t for _, code, t in subscribed if code is None or code >= 0x80]
        moments = [unit.stats.first_refused_at, *refused_subs, *(t for t, _ in cut[:1])]
        first_no = min((t for t in moments if t is not None), default=None)
        victim_hit = sum(1 for _, _, payload in victim.messages if b"forged" in payload)
        attack = {
            "unit": unit.unit_id,
            "victim": victim.unit_id,
            "started_wall": wall,
            "subscriptions": {f: describe_code(c) if c is not None else "cut" for f, c, _ in subscribed},
            "subscriptions_refused": sum(1 for _, c, _ in subscribed if c is None or c >= 0x80),
            "forged_reached_victim": victim_hit,
            "flood_sent": sent,
            "flood_seconds": round(flood_seconds, 2),
            "flood_delivered": dispatch.unit(unit.unit_id).total - before[2],
            "refused": unit.stats.refused - before[1],
            "refused_reasons": {describe_code(c): n for c, n in unit.stats.refused_reasons.items()},
            "cut_after_ms": round((cut[0][0] - started) * 1000, 1) if cut else None,
            "cut_reason": describe_code(cut[0][1]) if cut else None,
            "cuts": len(cut),
            "first_refusal_ms": round((first_no - started) * 1000, 1) if first_no else None,
        }
        self.summary["attack"] = attack
        self.say(
            f"   topic escape: {attack['subscriptions_refused']} of {len(subscribed)} subscriptions refused; "
            f"flood: {sent:,} sent, {attack['flood_delivered']:,} delivered, {attack['refused']:,} refused"
            + (
                f"; its session cut {len(cut)} time(s), first after {attack['cut_after_ms']:.0f} ms "
                f"({attack['cut_reason']})"
                if cut
                else ""
            )
        )
        return attack

    # --- 6 + 7. containment, and control that keeps working ---------------------------------------

    async def contain(
        self, unit: SimUnit, dispatch: Dispatch, ops: Dispatch, attack: dict[str, Any], diag_at_attack: int
    ) -> None:
        o = self.o
        # Entering diagnostic-only sends a report at once. A detector may have quarantined the unit
        # during the attack (the flood no longer gets it cut, so it runs long enough to be caught), and
        # then that report came before this step: count diagnostics from the attack's start instead.
        already = unit.behaviour.mode == MODE_DIAGNOSTIC
        diag_before = diag_at_attack if already else ops.unit(unit.unit_id).diag
        # A detector may already have done it; give it a moment before ops steps in.
        detected = await watch(lambda: unit.behaviour.mode == MODE_DIAGNOSTIC, DETECTOR_GRACE)
        method, note = ("detector", "") if detected else ("none", "")
        commanded_at = None
        if not detected and o.quarantine:
            commanded_at = time.time()
            method, note = await self._quarantine(unit.unit_id)
        elif not detected:
            note = self._uncontained()
        self.say(f"6. containment: {method if method != 'none' else note}")
        quarantined = await watch(lambda: unit.behaviour.mode == MODE_DIAGNOSTIC, o.contain_wait)
        contained_at = unit.mode_changes[-1][0] if quarantined and unit.mode_changes else None
        started = float(attack.get("started_wall", time.time()))
        if method != "none" and not quarantined:
            note = f"the unit got no diagnostic-only mode command within {o.contain_wait:g} s of {method}"
        self.summary["containment"] = {
            "method": method,
            "quarantined": quarantined,
            "time_to_contain_ms": round((contained_at - started) * 1000, 1) if contained_at else None,
            # From the ops command to the unit obeying it: what the gateway itself takes.
            "command_to_unit_ms": (
                round((contained_at - commanded_at) * 1000, 1) if contained_at and commanded_at else None
            ),
            "note": note or None,
        }
        # 7: while contained (or, without quarantine, right after the attack) control must still flow.
        await watch(lambda: unit.ready, 10.0)
        telemetry_before = dispatch.unit(unit.unit_id).total
        results = []
        for _ in range(o.controls):
            results.append(await dispatch.send_control(unit.unit_id, "speed-limit", {"kmh": 60}, timeout=5.0))
            await asyncio.sleep(1.0)
        rtts = [r.ack_ms for r in results if r.ack_ms is not None]
        self.summary["during_containment"] = {
            "controls_sent": len(results),
            "controls_acked": len(rtts),
            "control_rtt_ms": _median(rtts),
            "telemetry_delivered": dispatch.unit(unit.unit_id).total - telemetry_before,
            "diagnostics_delivered": ops.unit(unit.unit_id).diag - diag_before,
            "unit_mode": unit.behaviour.mode,
        }
        self.say(
            f"7. control while contained: {len(rtts)} of {len(results)} control messages to {unit.unit_id} "
            "delivered and acknowledged"
        )

    def _uncontained(self) -> str:
        return (
            "no quarantine: this gateway has no `fleetgate unit quarantine` and no detector quarantined the "
            f"unit within {DETECTOR_GRACE:g} s; its refusals and the cut session were the whole response"
        )

    async def _quarantine(self, unit_id: str) -> tuple[str, str]:
        """Ops quarantines the unit through the admin API with an operator certificate (else locally)."""
        o, ops = self.o, self.ops_files
        assert ops is not None, "the ops identity is made before the fleet starts"
        reason = ("--reason", "flood and topic escape (demo)")
        remote = ("--server", o.est_url, "--cert", str(ops.cert), "--key", str(ops.key), "--ca", str(ops.ca))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, lambda: fleetgate(o.data, "unit", "quarantine", unit_id, *reason, *remote)
            )
            return "`fleetgate unit quarantine` through the admin API (operator certificate)", ""
        except RuntimeError as remote_error:
            try:
                await loop.run_in_executor(
                    None, lambda: fleetgate(o.data, "unit", "quarantine", unit_id, *reason)
                )
                return "`fleetgate unit quarantine` on the data dir", f"the admin API refused: {remote_error}"
            except RuntimeError as exc:
                return "none", f"`fleetgate unit quarantine` failed: {exc}"

    async def release(self, unit: SimUnit, dispatch: Dispatch) -> None:
        """End the quarantine and show the unit's telemetry flowing again."""
        o = self.o
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, lambda: fleetgate(o.data, "unit", "release", unit.unit_id))
        except RuntimeError as exc:
            self.summary["release"] = {"error": str(exc)}
            return
        normal = await watch(lambda: unit.behaviour.mode != MODE_DIAGNOSTIC, o.contain_wait)
        before = dispatch.unit(unit.unit_id).total
        await asyncio.sleep(3.0)
        self.summary["release"] = {
            "mode": unit.behaviour.mode,
            "back_to_normal": normal,
            "telemetry_after_release": dispatch.unit(unit.unit_id).total - before,
        }
        self.say(
            f"   released: {unit.unit_id} is back in mode {unit.behaviour.mode}, "
            f"{self.summary['release']['telemetry_after_release']} telemetry messages in the next 3 s"
        )

    async def spoof(self, files: dict[str, UnitFiles], bad: str, victim: str) -> str:
        own = files[bad]
        client = AsyncPaho(victim, tls_context(str(own.ca), str(own.cert), str(own.key)), version=V5)
        outcome = await client.connect("localhost", self.o.mqtt_port)
        if outcome.accepted:
            await client.disconnect()
            return "ACCEPTED"
        return f"refused: {outcome.detail}"

    def render(self) -> None:
        self.console.print(summary_table(self.summary))


def _watch_cut(client: AsyncPaho, cut: list[tuple[float, int | None]]) -> None:
    """Record when the gateway (not we) closes the connection, keeping the unit's own handler."""
    chained = client.on_close

    def closed() -> None:
        if not client.closed_by_us:
            cut.append((time.monotonic(), client.disconnect_code))
        if chained is not None:
            chained()

    client.on_close = closed


async def _probe_subscriptions(
    connected: Callable[[], Awaitable[AsyncPaho | None]], victim: str
) -> list[tuple[str, int | None, float]]:
    out: list[tuple[str, int | None, float]] = []
    for topic_filter in ("#", "fleet/+/telemetry/#", f"fleet/{victim}/control/#", "$SYS/#"):
        client = await connected()
        code: int | None = None
        if client is not None:
            try:
                [code] = await client.subscribe([(topic_filter, 1)], timeout=3.0)
            except (ConnectionError, TimeoutError):
                code = None  # cut before the answer
        out.append((topic_filter, code, time.monotonic()))
    return out


async def _flood(unit: SimUnit, count: int, deadline: float) -> int:
    payload = json.dumps({"lat": 51.95, "lon": 4.14, "ts": 0, "speed_kmh": 0, "flood": True}).encode()
    message = Outgoing(f"fleet/{unit.unit_id}/telemetry/gps", payload)
    sent = 0
    while sent < count and time.monotonic() < deadline and unit.online:
        if unit.in_flight >= FLOOD_WINDOW:
            await asyncio.sleep(0.001)
            continue
        if unit.publish(message) is None:
            break
        sent += 1
        if sent % 25 == 0:
            await asyncio.sleep(0)
    return sent
