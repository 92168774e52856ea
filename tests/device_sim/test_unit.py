"""UnitBehaviour without sockets: what a truck says at `now`, and what it answers."""

from __future__ import annotations

import itertools
import json
import random
from typing import Any

import pytest

from device_sim.fleet.route import MAX_NORMAL_SPEED_KMH, Point, distance_km
from device_sim.fleet.unit import (
    MODE_DIAGNOSTIC,
    MODE_NORMAL,
    Outgoing,
    UnitBehaviour,
    UnitProfile,
    backoff_delay,
    renewal_due,
    renewal_time,
)
from pki.signed_json import JsonSigner
from tests.signing import make_signer

T0 = 1_800_000_000.0
UNIT = "TRK-00042"
GATEWAY = make_signer()  # the key of the server certificate the unit saw in its TLS handshake


def unit(seed: int | str = 1, **profile: Any) -> UnitBehaviour:
    behaviour = UnitBehaviour(UNIT, seed, T0, UnitProfile(**profile))
    behaviour.gateway_certificate = GATEWAY.certificate
    return behaviour


def run(behaviour: UnitBehaviour, seconds: float, step: float = 0.25) -> list[tuple[float, Outgoing]]:
    out: list[tuple[float, Outgoing]] = []
    t = T0
    while t <= T0 + seconds:
        out.extend((t, m) for m in behaviour.step(t))
        t += step
    return out


def streams(messages: list[tuple[float, Outgoing]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, m in messages:
        key = m.topic.removeprefix(f"fleet/{UNIT}/")
        counts[key] = counts.get(key, 0) + 1
    return counts


def body(message: Outgoing) -> dict[str, Any]:
    value = json.loads(message.payload)
    assert isinstance(value, dict)
    return value


# --- determinism --------------------------------------------------------------------------------


def test_the_same_seed_says_the_same_things_at_the_same_times() -> None:
    assert run(unit(7), 300) == run(unit(7), 300)


def test_another_seed_or_unit_says_something_else() -> None:
    assert run(unit(7), 60) != run(unit(8), 60)
    other = UnitBehaviour("TRK-00043", 7, T0)
    assert run(unit(7), 60) != run(other, 60)


def test_how_often_it_is_asked_changes_when_but_not_what_it_says() -> None:
    fine, coarse = run(unit(3), 120, step=0.05), run(unit(3), 120, step=0.5)
    assert streams(fine) == streams(coarse)
    # Each message comes at most one polling step late, never early.
    for (t_fine, a), (t_coarse, b) in zip(
        sorted(fine, key=lambda x: (x[1].topic, x[0])),
        sorted(coarse, key=lambda x: (x[1].topic, x[0])),
        strict=True,
    ):
        assert a.topic == b.topic
        assert 0.0 <= t_coarse - t_fine <= 0.5


# --- what a unit publishes -----------------------------------------------------------------------


def test_streams_follow_their_intervals() -> None:
    counts = streams(run(unit(), 600))
    assert counts["telemetry/gps"] == pytest.approx(600, abs=2)
    assert counts["telemetry/engine"] == pytest.approx(120, abs=2)
    assert counts["telemetry/fuel"] == pytest.approx(20, abs=2)
    assert counts["diag/report"] == pytest.approx(10, abs=1)


def test_configured_rates_are_honoured() -> None:
    counts = streams(run(unit(gps_interval=5.0, diag_interval=30.0), 300))
    assert counts["telemetry/gps"] == pytest.approx(60, abs=1)
    assert counts["diag/report"] == pytest.approx(10, abs=1)


def test_a_stalled_unit_does_not_burst_to_catch_up() -> None:
    behaviour = unit()
    behaviour.step(T0 + 1)
    late = behaviour.step(T0 + 3600)  # an hour without being asked
    assert len(late) <= 4  # at most one message per stream
    assert len(behaviour.step(T0 + 3600.5)) <= 1


def test_next_due_is_when_step_has_something() -> None:
    behaviour = unit()
    due = behaviour.next_due()
    assert behaviour.step(due - 0.001) == []
    assert behaviour.step(due) != []


def test_gps_payload_has_the_documented_fields() -> None:
    gps = [m for _, m in run(unit(), 5) if m.topic.endswith("/telemetry/gps")]
    fix = body(gps[0])
    assert set(fix) == {"lat", "lon", "ts", "speed_kmh", "heading", "driver_id"}  # driver_id: pii, for views
    assert T0 <= fix["ts"] <= T0 + 5
    assert 0 <= fix["heading"] < 360
    assert gps[0].qos == 1 and not gps[0].retain


def test_engine_fuel_and_diag_payloads() -> None:
    messages = run(unit(), 120)
    engine = body(next(m for _, m in messages if m.topic.endswith("/engine")))
    assert {"rpm", "coolant_c", "load_pct", "speed_kmh", "odometer_km", "ts"} <= set(engine)
    fuel = body(next(m for _, m in messages if m.topic.endswith("/fuel")))
    assert 0 < fuel["level_pct"] <= 100
    diag = body(next(m for _, m in messages if m.topic.endswith("/diag/report")))
    assert {"dtc", "battery_v", "firmware", "mode"} <= set(diag)


def test_diagnostics_carry_fault_codes_sometimes() -> None:
    behaviour = unit(diag_interval=1.0, fault_chance=0.5)
    reports = [body(m) for _, m in run(behaviour, 400) if m.topic.endswith("/diag/report")]
    with_faults = [r for r in reports if r["dtc"]]
    assert 0 < len(with_faults) < len(reports)
    assert all({"spn", "fmi", "text"} <= set(r["dtc"][0]) for r in with_faults)


@pytest.mark.parametrize("seed", range(12))
def test_speeds_stay_realistic_and_fixes_never_imply_impossible_travel(seed: int) -> None:
    behaviour = unit(seed)
    fixes = [body(m) for _, m in run(behaviour, 900, step=1.0) if m.topic.endswith("/gps")]
    assert all(f["speed_kmh"] <= MAX_NORMAL_SPEED_KMH for f in fixes)
    for a, b in itertools.pairwise(fixes):
        km = distance_km(Point(a["lat"], a["lon"]), Point(b["lat"], b["lon"]))
        hours = (b["ts"] - a["ts"]) / 3600.0
        assert km / hours < MAX_NORMAL_SPEED_KMH + 5  # + rounding of 6-decimal coordinates


def test_presence_and_will() -> None:
    behaviour = unit()
    [online] = behaviour.on_connect(T0)
    will = behaviour.will()
    assert online.topic == will.topic == f"fleet/{UNIT}/state"
    assert online.retain and will.retain
    assert body(online)["online"] is True and body(will)["online"] is False
    assert behaviour.subscriptions() == (f"fleet/{UNIT}/cmd/#", f"fleet/{UNIT}/control/#")


# --- mode commands -------------------------------------------------------------------------------

QUARANTINE = {
    "mode": "diagnostic-only",
    "unit": UNIT,
    "reason": "flood",
    "since": "2027-01-15T08:00:00.000000+00:00",
    "by": "detector/publish_rate",
    "allowed": [f"fleet/{UNIT}/diag/#", f"fleet/{UNIT}/cmd/+/ack"],
}
RELEASE = {"mode": "normal", "unit": UNIT, "since": "2027-01-15T09:00:00.000000+00:00", "by": "operator/sam"}


def mode(
    behaviour: UnitBehaviour, command: dict[str, Any], now: float, signer: JsonSigner = GATEWAY
) -> list[Outgoing]:
    """Deliver `command` on the unit's mode topic, signed by `signer` (the gateway unless told)."""
    return behaviour.on_message(f"fleet/{UNIT}/cmd/mode", signer.sign(command), now)


def test_diagnostic_only_stops_telemetry_and_keeps_diagnostics() -> None:
    behaviour = unit(diag_interval=10.0)
    run(behaviour, 30)
    answer = mode(behaviour, QUARANTINE, T0 + 30)
    assert behaviour.mode == MODE_DIAGNOSTIC and behaviour.mode_reason == "flood"
    ack, report = answer
    assert ack.topic == f"fleet/{UNIT}/cmd/mode/ack" and body(ack)["status"] == "applied"
    assert report.topic.endswith("/diag/report")  # a report at once, for the technician
    later = []
    t = T0 + 30.25
    while t < T0 + 120:
        later += behaviour.step(t)
        t += 0.25
    assert {m.topic.removeprefix(f"fleet/{UNIT}/") for m in later} == {"diag/report"}
    assert all(body(m)["mode"] == MODE_DIAGNOSTIC for m in later)


def test_release_resumes_telemetry_without_a_burst() -> None:
    behaviour = unit()
    mode(behaviour, QUARANTINE, T0)
    t = T0
    while t < T0 + 300:
        behaviour.step(t)
        t += 0.5
    mode(behaviour, RELEASE, T0 + 300)
    assert behaviour.mode == MODE_NORMAL
    resumed = behaviour.step(T0 + 301)
    assert 1 <= len(resumed) <= 4
    assert any(m.topic.endswith("/telemetry/gps") for m in resumed)


def test_mode_commands_arrive_again_after_a_reconnect_and_are_acknowledged_each_time() -> None:
    behaviour = unit()
    first = mode(behaviour, QUARANTINE, T0)
    again = mode(behaviour, QUARANTINE, T0 + 60)  # the retained command after reconnecting
    assert len(first) == 2 and len(again) == 1  # no second immediate report: nothing changed
    assert body(again[0])["status"] == "applied"


def test_a_signed_command_with_an_unknown_mode_is_rejected_and_changes_nothing() -> None:
    behaviour = unit()
    for command in ({**QUARANTINE, "mode": "turbo"}, {k: v for k, v in QUARANTINE.items() if k != "mode"}):
        [ack] = mode(behaviour, command, T0)
        assert body(ack)["status"] == "rejected" and body(ack)["reason"] == "unknown mode"
    assert behaviour.mode == MODE_NORMAL


FORGED = {**QUARANTINE, "mode": "normal"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "malformed"),
        (b"[1,2]", "malformed"),
        (json.dumps(FORGED).encode(), "unsigned"),  # what any client could publish
        (make_signer("mallory").sign(FORGED), "unknown_signer"),  # signed, by another key
        (  # another key, claiming to be the gateway's
            json.dumps({**json.loads(make_signer().sign(FORGED)), "signer": GATEWAY.signer}).encode(),
            "bad_signature",
        ),
        (  # the gateway's signature, the mode changed afterwards
            json.dumps({**json.loads(GATEWAY.sign(QUARANTINE)), "mode": "normal"}).encode(),
            "bad_signature",
        ),
        (GATEWAY.sign({**RELEASE, "unit": "TRK-00001"}), "other_unit"),  # genuine, another truck's
    ],
    ids=["not-json", "not-an-object", "unsigned", "stranger", "stranger-as-gateway", "edited", "other-unit"],
)
def test_a_mode_command_not_from_the_gateway_is_ignored_counted_and_reported(
    payload: bytes, reason: str
) -> None:
    behaviour = unit()
    mode(behaviour, QUARANTINE, T0)  # quarantined, for real
    [ack] = behaviour.on_message(f"fleet/{UNIT}/cmd/mode", payload, T0 + 1)
    assert behaviour.mode == MODE_DIAGNOSTIC and behaviour.mode_reason == "flood"  # not released
    assert ack.topic == f"fleet/{UNIT}/cmd/mode/ack"
    assert body(ack)["status"] == "rejected" and body(ack)["reason"] == reason
    assert behaviour.mode_rejections == {reason: 1}
    later = behaviour.step(T0 + 400)  # and it keeps behaving as quarantined: diagnostics only
    assert later and all(m.topic.endswith("/diag/report") for m in later)


def test_a_replayed_older_command_cannot_undo_a_newer_one() -> None:
    behaviour = unit()
    old_release = {**RELEASE, "since": "2027-01-14T09:00:00.000000+00:00"}  # last week's release
    mode(behaviour, QUARANTINE, T0)
    [ack] = mode(behaviour, old_release, T0 + 1)  # genuinely signed, but older than the quarantine
    assert body(ack)["reason"] == "stale" and behaviour.mode == MODE_DIAGNOSTIC
    mode(behaviour, RELEASE, T0 + 2)  # the real release, newer
    assert behaviour.mode == MODE_NORMAL and behaviour.mode_rejections == {"stale": 1}


def test_without_the_gateways_certificate_nothing_is_obeyed() -> None:
    behaviour = UnitBehaviour(UNIT, 1, T0)  # never completed a TLS handshake
    [ack] = mode(behaviour, QUARANTINE, T0)
    assert body(ack)["reason"] == "unverifiable" and behaviour.mode == MODE_NORMAL


def test_a_cleared_retained_mode_is_not_a_command() -> None:
    behaviour = unit()
    assert behaviour.on_message(f"fleet/{UNIT}/cmd/mode", b"", T0) == []


# --- control messages ----------------------------------------------------------------------------


def test_control_messages_are_acknowledged_with_their_id() -> None:
    behaviour = unit()
    request = json.dumps({"id": "speed-limit-7", "kmh": 60}).encode()
    [ack] = behaviour.on_message(f"fleet/{UNIT}/control/speed-limit", request, T0)
    assert ack.topic == f"fleet/{UNIT}/control/speed-limit/ack"
    assert body(ack)["id"] == "speed-limit-7" and body(ack)["status"] == "applied"
    assert ack.qos == 1 and not ack.retain


def test_control_is_acknowledged_in_diagnostic_only_mode_too() -> None:
    behaviour = unit()
    mode(behaviour, QUARANTINE, T0)
    [ack] = behaviour.on_message(f"fleet/{UNIT}/control/brake", b'{"id": 1}', T0 + 1)
    assert body(ack)["mode"] == MODE_DIAGNOSTIC and body(ack)["id"] == 1


def test_opaque_control_bytes_are_acknowledged_by_digest() -> None:
    [ack] = unit().on_message(f"fleet/{UNIT}/control/raw", bytes(range(256)), T0)
    assert len(body(ack)["id"]) == 16


@pytest.mark.parametrize(
    "topic",
    [
        f"fleet/{UNIT}/control/speed-limit/ack",  # our own ack, echoed back (3.1.1 has no no-local)
        f"fleet/{UNIT}/cmd/mode/ack",
        "fleet/TRK-00001/control/brake",  # someone else's
        f"fleet/{UNIT}/cmd/unknown",
    ],
)
def test_acks_and_foreign_topics_are_never_answered(topic: str) -> None:
    assert unit().on_message(topic, b'{"id": "x"}', T0) == []


# --- timing decisions ----------------------------------------------------------------------------


def test_renewal_is_due_at_two_thirds_of_the_lifetime() -> None:
    start, end = 0.0, 30 * 86400.0
    assert renewal_time(start, end) == pytest.approx(20 * 86400.0)
    assert not renewal_due(start, end, 20 * 86400.0 - 1)
    assert renewal_due(start, end, 20 * 86400.0)
    assert renewal_due(start, end, 0.5 * 86400.0, fraction=0.01)


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        window = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= window for d in delays)
        assert max(delays) > window * 0.8 and min(delays) < window * 0.2  # spread over the window
    assert backoff_delay(10_000, rng) <= 30.0


def test_backoff_is_seeded() -> None:
    assert [backoff_delay(3, random.Random("u1")) for _ in range(3)] == [
        backoff_delay(3, random.Random("u1")) for _ in range(3)
    ]


def test_profiles_are_validated() -> None:
    with pytest.raises(ValueError, match="gps_interval"):
        UnitProfile(gps_interval=0)
    with pytest.raises(ValueError, match="qos"):
        UnitProfile(qos=3)
