"""What a telematics unit says, and when: pure, seeded behaviour with the time passed in.

Theory of operation. `UnitBehaviour` never touches a socket or a clock. The fleet runner asks it
`step(now)` (what is due now?), `on_message(topic, payload, now)` (what do I answer?) and
`on_connect(now)` (presence), and publishes whatever `Outgoing` values come back. Streams run on
their own schedules with a per-unit phase (so 500 units do not all speak in the same millisecond);
a schedule that fell behind skips ahead instead of catching up, because a real unit that was stalled
reports its current state, not a burst of stale messages that would look like a flood.

Modes, driven by the gateway's retained `fleet/{unit}/cmd/mode`:

    normal            telemetry (gps, engine, fuel) + diagnostics
    diagnostic-only   diagnostics only; telemetry schedules keep ticking silently, so release does
                      not cause a burst

A mode command is obeyed only if it is the gateway's: signed by the key of the server certificate
the unit saw in its TLS handshake (`gateway_certificate`, verified against the fleet root by TLS;
pki/signed_json.py), naming this unit, and not older than the command in force (`since`), so a
replayed earlier command cannot undo a later one. Anything else — forged by a client that may
publish on `cmd/`, copied from another unit, replayed — is ignored, counted (`mode_rejections`) and
reported on the ack topic with `status: rejected` and the reason.

Every mode command is acknowledged on `fleet/{unit}/cmd/mode/ack`; every control message
`fleet/{unit}/control/<name>` on `fleet/{unit}/control/<name>/ack`. A unit subscribed to
`control/#` also hears its own acks (3.1.1 has no no-local), so `/ack` topics are never answered.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from device_sim.fleet.route import Point, Route, RouteState, generate_route, scatter
from pki.signed_json import SignatureError, verify

MODE_NORMAL = "normal"
MODE_DIAGNOSTIC = "diagnostic-only"
MODES = (MODE_NORMAL, MODE_DIAGNOSTIC)
FIRMWARE = "fleet-sim 1.4.2"
PATCH_LEVEL = "2026-09"
DRIVERS = ("D-1042", "D-2210", "D-3307", "D-4415", "D-5120", "D-6031")  # pii in telemetry, for the views
CARGOES = ("containers", "reefer: bananas", "steel coils", "parcels", "empty")  # commercial
ROTTERDAM = Point(51.95, 4.14)  # the default region's centre: the port, where many tours start
TANK_LITRES = 600.0
LITRES_PER_KM = 0.32

# J1939 suspect parameter numbers a truck's engine controller reports, with failure mode and text.
DTC_CATALOGUE = (
    (110, 0, "engine coolant temperature high"),
    (100, 1, "engine oil pressure low"),
    (3251, 0, "DPF differential pressure high"),
    (3226, 2, "aftertreatment NOx sensor erratic"),
    (168, 1, "battery potential low"),
    (94, 18, "fuel delivery pressure low"),
    (639, 9, "J1939 network abnormal update rate"),
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True)
class UnitProfile:
    """How often a unit speaks (seconds) and at which QoS; `configs/sim.yaml` overrides these."""

    gps_interval: float = 1.0
    engine_interval: float = 5.0
    fuel_interval: float = 30.0
    diag_interval: float = 60.0
    qos: int = 1
    fault_chance: float = 0.1  # chance that a diagnostic window (10 reports) carries a fault code
    centre: Point = ROTTERDAM  # depots are scattered within radius_km of here
    radius_km: float = 60.0

    def __post_init__(self) -> None:
        for name in ("gps_interval", "engine_interval", "fuel_interval", "diag_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")


@dataclass
class _Schedule:
    interval: float
    next_at: float

    def due(self, now: float) -> bool:
        if now < self.next_at:
            return False
        self.next_at += self.interval
        if self.next_at <= now:  # fell behind: skip ahead, never burst
            self.next_at = now + self.interval
        return True


def _phase(seed: int | str, stream: str, interval: float) -> float:
    return random.Random(f"phase:{seed}:{stream}").uniform(0.0, interval)


def renewal_due(not_before: float, not_after: float, now: float, fraction: float = 2 / 3) -> bool:
    """Renew at `fraction` of the certificate's lifetime (the product renews at 2/3)."""
    return now >= renewal_time(not_before, not_after, fraction)


def renewal_time(not_before: float, not_after: float, fraction: float = 2 / 3) -> float:
    return not_before + (not_after - not_before) * fraction


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 30.0) -> float:
    """Jittered exponential backoff ("full jitter"): uniform in [0, min(cap, base * 2**attempt)].

    Full jitter spreads a fleet that lost its connection at the same instant (a cellular outage) over
    the whole window instead of returning it in synchronized waves.
    """
    return rng.uniform(0.0, min(cap, base * (2 ** min(attempt, 30))))


@dataclass
class UnitBehaviour:
    unit_id: str
    seed: int | str
    started_at: float
    profile: UnitProfile = field(default_factory=UnitProfile)
    route: Route | None = None
    mode: str = MODE_NORMAL
    mode_reason: str = ""
    firmware: str = FIRMWARE
    # The server certificate of the current TLS session: the only key a mode command may come from.
    gateway_certificate: x509.Certificate | None = None
    mode_since: str = ""  # `since` of the command in force; an older one is a replay
    mode_rejections: Counter[str] = field(default_factory=Counter)  # commands ignored, by reason
    _streams: dict[str, _Schedule] = field(init=False, repr=False)
    _offset: float = field(init=False, repr=False)
    _diag_count: int = field(init=False, default=0, repr=False)

    def __post_init__(self) -> None:
        if self.route is None:
            start = scatter(f"{self.seed}:{self.unit_id}", self.profile.centre, self.profile.radius_km)
            self.route = generate_route(f"{self.seed}:{self.unit_id}", start)
        # Trucks are spread along their tours, not all leaving the depot at once.
        self._offset = random.Random(f"offset:{self.seed}:{self.unit_id}").uniform(0.0, self.route.duration_s)
        p = self.profile
        intervals = {"gps": p.gps_interval, "engine": p.engine_interval, "fuel": p.fuel_interval}
        intervals["diag"] = p.diag_interval
        self._streams = {
            name: _Schedule(interval, self.started_at + _phase(f"{self.seed}:{self.unit_id}", name, interval))
            for name, interval in intervals.items()
        }

    # --- topics ------------------------------------------------------------------------------

    def topic(self, suffix: str) -> str:
        return f"fleet/{self.unit_id}/{suffix}"

    def subscriptions(self) -> tuple[str, ...]:
        return (self.topic("cmd/#"), self.topic("control/#"))

    def will(self) -> Outgoing:
        body = {"online": False, "reason": "connection lost"}
        return Outgoing(self.topic("state"), _json(body), qos=1, retain=True)

    # --- what to say -------------------------------------------------------------------------

    def on_connect(self, now: float) -> list[Outgoing]:
        # Posture rides on the retained state (MQTT 3.1.1 has no CONNECT user properties).
        body = {
            "online": True,
            "ts": round(now, 3),
            "mode": self.mode,
            "firmware": self.firmware,
            "patch_level": PATCH_LEVEL,
            "secure_boot": True,
        }
        return [Outgoing(self.topic("state"), _json(body), qos=1, retain=True)]

    def posture_properties(self) -> tuple[tuple[str, str], ...]:
        """Posture as MQTT 5 CONNECT user properties (3.1.1 units report it on their state instead)."""
        return (("firmware", self.firmware), ("patch_level", PATCH_LEVEL), ("secure_boot", "true"))

    def next_due(self) -> float:
        return min(s.next_at for s in self._streams.values())

    def step(self, now: float) -> list[Outgoing]:
        """Everything due at `now`, in a fixed stream order."""
        out: list[Outgoing] = []
        state = self.state_at(now)
        for name, schedule in self._streams.items():
            if not schedule.due(now):
                continue
            if name == "diag":
                out.append(self._diag(now))
            elif self.mode == MODE_NORMAL:
                out.append(self._telemetry(name, state, now))
        return out

    def state_at(self, now: float) -> RouteState:
        assert self.route is not None
        return self.route.state_at(now - self.started_at + self._offset)

    def gps_fix(self, now: float) -> dict[str, Any]:
        state = self.state_at(now)
        return _gps(state, now)

    def _telemetry(self, stream: str, state: RouteState, now: float) -> Outgoing:
        pick = int(hashlib.sha256(f"{self.seed}:{self.unit_id}".encode()).hexdigest()[:8], 16)
        if stream == "gps":  # who drives it (pii) and what it carries (commercial): partners must not see
            body = {**_gps(state, now), "driver_id": DRIVERS[pick % len(DRIVERS)]}
        elif stream == "engine":
            body = {**_engine(state, now, now - self.started_at), "cargo": CARGOES[pick % len(CARGOES)]}
        else:
            body = _fuel(state, now)
        return Outgoing(self.topic(f"telemetry/{stream}"), _json(body), qos=self.profile.qos)

    def _diag(self, now: float) -> Outgoing:
        self._diag_count += 1
        window = int((now - self.started_at) // (self.profile.diag_interval * 10))
        rng = random.Random(f"dtc:{self.seed}:{self.unit_id}:{window}")
        faults = []
        if rng.random() < self.profile.fault_chance:
            spn, fmi, text = rng.choice(DTC_CATALOGUE)
            faults.append({"spn": spn, "fmi": fmi, "text": text, "occurrences": rng.randint(1, 5)})
        body = {
            "ts": round(now, 3),
            "dtc": faults,
            "battery_v": round(27.2 + rng.uniform(-0.4, 0.6), 2),
            "firmware": FIRMWARE,
            "mode": self.mode,
            "report": self._diag_count,
        }
        return Outgoing(self.topic("diag/report"), _json(body), qos=self.profile.qos)

    # --- what to answer ----------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Outgoing]:
        prefix = self.topic("")
        if not topic.startswith(prefix) or topic.endswith("/ack"):
            return []  # not ours, or an ack echoed back to us on control/#
        rest = topic[len(prefix) :].split("/")
        if rest[0] == "cmd" and len(rest) == 2 and rest[1] == "mode":
            return self._on_mode(payload, now)
        if rest[0] == "control" and len(rest) >= 2:
            return [self._control_ack(rest[1], payload, now)]
        return []

    def _on_mode(self, payload: bytes, now: float) -> list[Outgoing]:
        if not payload:
            return []  # a cleared retained message carries no order
        ack_topic = self.topic("cmd/mode/ack")
        command = self._genuine(payload)
        if isinstance(command, str):
            self.mode_rejections[command] += 1
            body = {"status": "rejected", "reason": command, "mode": self.mode, "ts": round(now, 3)}
            return [Outgoing(ack_topic, _json(body), qos=1)]
        mode = command.get("mode")
        if mode not in MODES:
            body = {"status": "rejected", "reason": "unknown mode", "mode": self.mode, "ts": round(now, 3)}
            return [Outgoing(ack_topic, _json(body), qos=1)]
        assert isinstance(mode, str)
        changed = mode != self.mode
        self.mode, self.mode_reason = mode, str(command.get("reason", ""))
        self.mode_since = str(command["since"])
        out = [Outgoing(ack_topic, _json({"status": "applied", "mode": mode, "ts": round(now, 3)}), qos=1)]
        if changed and mode == MODE_DIAGNOSTIC:
            out.append(self._diag(now))  # the technician gets a report at once, not in a minute
        return out

    def _genuine(self, payload: bytes) -> dict[str, Any] | str:
        """The gateway's command for this unit, or why it is not one (the reason reported)."""
        if self.gateway_certificate is None:
            return "unverifiable"  # no TLS session to take the gateway's certificate from
        try:
            command = verify(payload, self.gateway_certificate)
        except SignatureError as exc:
            return exc.reason  # malformed, unsigned, unknown_signer, bad_signature
        if command.get("unit") != self.unit_id:
            return "other_unit"  # genuine, but for another truck: copied onto our topic
        since = command.get("since")
        if not isinstance(since, str) or since < self.mode_since:
            return "stale"  # genuine, but older than the command in force: replayed
        return command

    def _control_ack(self, name: str, payload: bytes, now: float) -> Outgoing:
        request = _parse_json(payload)
        ref = request.get("id") if request and isinstance(request.get("id"), str | int) else None
        if ref is None:
            ref = hashlib.sha256(payload).hexdigest()[:16]  # opaque control bytes are still answerable
        body = {"id": ref, "control": name, "status": "applied", "mode": self.mode, "ts": round(now, 3)}
        return Outgoing(self.topic(f"control/{name}/ack"), _json(body), qos=1)


def _gps(state: RouteState, now: float) -> dict[str, Any]:
    return {
        "lat": round(state.position.lat, 6),
        "lon": round(state.position.lon, 6),
        "ts": round(now, 3),
        "speed_kmh": round(state.speed_kmh, 1),
        "heading": round(state.heading, 1),
    }


def _engine(state: RouteState, now: float, running_s: float) -> dict[str, Any]:
    rpm = 600.0 if state.stopped else 1000.0 + state.speed_kmh * 9.0
    warm = min(1.0, running_s / 600.0)  # coolant climbs to temperature over ten minutes
    return {
        "ts": round(now, 3),
        "rpm": round(rpm),
        "coolant_c": round(20.0 + 68.0 * warm, 1),
        "load_pct": 8 if state.stopped else round(min(95.0, 25.0 + state.speed_kmh * 0.6)),
        "speed_kmh": round(state.speed_kmh, 1),
        "odometer_km": round(state.odometer_km, 2),
    }


def _fuel(state: RouteState, now: float) -> dict[str, Any]:
    tank_km = TANK_LITRES * 0.8 / LITRES_PER_KM  # refuel every time 80 % of the tank is used
    used = (state.odometer_km % tank_km) * LITRES_PER_KM
    return {
        "ts": round(now, 3),
        "level_pct": round(100.0 * (TANK_LITRES - used) / TANK_LITRES, 1),
        "rate_lph": 2.5 if state.stopped else round(state.speed_kmh * LITRES_PER_KM, 1),
    }


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _parse_json(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None
