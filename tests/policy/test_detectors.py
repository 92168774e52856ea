"""Each detector as a table, time by hand: fires at its threshold, not below it, forgets after its window."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from gateway.policy import detector_rules as cfg
from gateway.policy.detectors import (
    CloningDetector,
    CountDetector,
    NetworkDetector,
    PublishRateDetector,
    TravelDetector,
    haversine_km,
    host_of,
)
from pki.names import Identity

T0 = 1_700_000_000.0
TRK1 = Identity("unit", "TRK-1", "fleet.local")


def count_detector(threshold: int = 10, window: float = 30.0) -> CountDetector:
    return CountDetector(
        "denial_burst", TRK1, threshold, window, "denial_burst", "detectors/denial_burst/threshold"
    )


# (events as offsets from T0, evaluated at offset, threshold, window) → fires?
COUNTS = [
    ("at the threshold", [i * 0.5 for i in range(10)], 5.0, 10, 30.0, True),
    ("one below", [i * 0.5 for i in range(9)], 5.0, 10, 30.0, False),
    ("above", [i * 0.1 for i in range(50)], 5.0, 10, 30.0, True),
    ("spread beyond the window", [i * 4.0 for i in range(10)], 36.0, 10, 30.0, False),
    ("window passed", [i * 0.5 for i in range(10)], 40.0, 10, 30.0, False),
    ("threshold one", [0.0], 0.0, 1, 300.0, True),
    ("old ones expired, new ones not enough", [0, 1, 2, 3, 4, 40, 41, 42, 43], 43.0, 5, 30.0, False),
]


@pytest.mark.parametrize(
    ("case", "offsets", "at", "threshold", "window", "fires"), COUNTS, ids=[c[0] for c in COUNTS]
)
def test_count_detector_table(
    case: str, offsets: list[float], at: float, threshold: int, window: float, fires: bool
) -> None:
    detector = count_detector(threshold, window)
    for offset in offsets:
        detector.observe(T0 + offset, "fleet/TRK-2/telemetry/gps")
    firing = detector.fired(T0 + at)
    assert (firing is not None) is fires
    if firing is not None:
        assert firing.evidence["count"] >= threshold
        assert firing.evidence["threshold"] == threshold
        assert firing.rule == "detectors/denial_burst/threshold"
        assert firing.context == {"seen": "fleet/TRK-2/telemetry/gps"}


def test_count_detector_fires_once_per_evidence() -> None:
    detector = count_detector(threshold=3)
    for i in range(3):
        detector.observe(T0 + i)
    assert detector.fired(T0 + 3) is not None
    assert detector.fired(T0 + 3.1) is None  # the same three events never fire twice
    for i in range(3):
        detector.observe(T0 + 4 + i)
    assert detector.fired(T0 + 7) is not None  # three fresh ones do


# --- publish rate -----------------------------------------------------------------------------------

RATE = cfg.PublishRate()  # window 10, baseline 300, factor 10, floor 35/s, ceiling 60/s


def feed(detector: PublishRateDetector, start: float, seconds: float, per_second: float) -> float:
    """Publish evenly at `per_second` for `seconds`; returns the time after the last message."""
    n = round(seconds * per_second)
    for i in range(n):
        detector.observe(start + i / per_second)
    return start + seconds


# (rate before, for how long; burst rate for 10 s) → reason or None
RATES = [
    ("normal unit", 1.3, 600, 1.3, None),
    ("new unit at the unit role's permitted 20/s", 0, 0, 20.0, None),
    ("new unit at 34.9/s", 0, 0, 34.9, None),
    ("new unit at the floor", 0, 0, 35.0, "publish_rate_spike"),
    ("ceiling", 0, 0, 60.0, "publish_rate_ceiling"),
    ("busy unit at 10x its baseline", 4.0, 600, 40.0, "publish_rate_spike"),
    ("busy unit at 8x its baseline", 4.0, 600, 32.0, None),
    ("busy unit just under the ceiling", 6.0, 600, 59.0, None),
]


@pytest.mark.parametrize(
    ("case", "base", "base_seconds", "burst", "reason"), RATES, ids=[r[0] for r in RATES]
)
def test_publish_rate_table(
    case: str, base: float, base_seconds: float, burst: float, reason: str | None
) -> None:
    detector = PublishRateDetector(TRK1, RATE)
    t = feed(detector, T0, base_seconds, base) if base else T0
    assert detector.fired(t) is None
    t = feed(detector, t, 10, burst)
    firing = detector.fired(t - 0.01)
    assert (firing.reason if firing else None) == reason
    if firing is not None:
        assert firing.evidence["messages"] >= RATE.min_per_second * RATE.window
        assert firing.rule.startswith("detectors/publish_rate/")


def test_publish_rate_spike_is_forgotten_after_its_window() -> None:
    detector = PublishRateDetector(TRK1, RATE)
    feed(detector, T0, 10, 40.0)  # would fire at T0+10...
    assert detector.fired(T0 + 25) is None  # ...but nobody asked until the window had passed


def test_a_unit_that_never_published_fires_nothing_even_with_no_floor() -> None:
    # Its windows are made at the first publish (an idle unit holds none); until then it has no rate.
    detector = PublishRateDetector(TRK1, replace(RATE, min_per_second=0.0))
    assert detector.fired(T0) is None and detector.baseline_per_second(T0) == 0.0
    t = feed(detector, T0, 10, RATE.ceiling_per_second + 1)
    firing = detector.fired(t - 0.01)
    assert firing is not None and firing.reason == "publish_rate_ceiling"


def test_a_flood_does_not_become_the_baseline() -> None:
    detector = PublishRateDetector(TRK1, RATE)
    t = feed(detector, T0, 300, 1.0)
    fired = 0
    for _ in range(30):  # five minutes of 40/s: above the floor, 40x the baseline
        t = feed(detector, t, 10, 40.0)
        fired += detector.fired(t - 0.01) is not None
    assert fired == 30  # every window of the flood fires; the flood never taught it "40/s is normal"
    assert detector.baseline_per_second(t) < 1.1


# --- impossible travel ------------------------------------------------------------------------------

TRAVEL = cfg.ImpossibleTravel()
ROTTERDAM = (51.95, 4.14)


def fix(lat: float, lon: float, ts: float, **extra: object) -> bytes:
    return json.dumps({"lat": lat, "lon": lon, "ts": ts, **extra}).encode()


def drive(
    detector: TravelDetector, start: float, minutes: float, kmh: float, lat: float, lon: float
) -> float:
    """One fix a second, due east at `kmh`; returns the end time. Fires nothing, or the test fails."""
    km_per_degree = 111.32 * math.cos(math.radians(lat))
    for s in range(int(minutes * 60)):
        now = start + s
        detector.observe(fix(lat, lon + kmh * s / 3600 / km_per_degree, now), now)
        assert detector.fired(now) is None, f"fired {s} s into the drive"
    return start + minutes * 60


def test_a_realistic_drive_never_fires() -> None:
    detector = TravelDetector(TRK1, TRAVEL)
    drive(detector, T0, 10, 100.0, *ROTTERDAM)
    assert (detector.fixes, detector.malformed) == (600, 0)


def test_a_900_km_jump_in_one_minute_fires() -> None:
    detector = TravelDetector(TRK1, TRAVEL)
    detector.observe(fix(*ROTTERDAM, T0), T0)
    detector.observe(fix(48.14, 11.58, T0 + 60), T0 + 60)  # Munich, ~600 km... in a minute
    far = haversine_km(*ROTTERDAM, 41.90, 12.50)  # Rome: ~1300 km
    detector.observe(fix(41.90, 12.50, T0 + 120), T0 + 120)
    firing = detector.fired(T0 + 120)
    assert firing is not None and firing.reason == "impossible_travel"
    assert firing.evidence["speed_kmh"] > 30_000  # the worst pair is reported
    assert firing.rule == "detectors/impossible_travel/max_speed_kmh"
    assert far > 900


# (km jumped, seconds between fixes, where the next fix is) → fires? (max 250 km/h, 1 km slack, 20 km glitch)
JUMPS = [
    ("900 km in a minute", 900, 60, None, True),
    ("251 km/h after slack", 252, 3600, None, True),
    ("249 km/h after slack", 250, 3600, None, False),
    ("GPS error of 800 m", 0.8, 1, None, False),
    ("2 km glitch that comes back", 2.0, 1, "back", False),
    ("2 km jump that stays", 2.0, 1, "stays", True),
    ("2 km jump, no next fix yet", 2.0, 1, None, False),
    ("same timestamp, 50 km apart", 50, 0, None, True),
    ("900 km in four hours", 900, 4 * 3600, None, False),
]


@pytest.mark.parametrize(("case", "km", "seconds", "then", "fires"), JUMPS, ids=[j[0] for j in JUMPS])
def test_travel_table(case: str, km: float, seconds: float, then: str | None, fires: bool) -> None:
    detector = TravelDetector(TRK1, TRAVEL)
    lat = ROTTERDAM[0]
    detector.observe(fix(lat, 0.0, T0), T0)
    lon = km / (111.32 * math.cos(math.radians(lat)))  # along a parallel: close enough to haversine
    t = T0 + seconds
    detector.observe(fix(lat, lon, t), t)
    if then is not None:
        t += 1
        detector.observe(fix(lat, lon if then == "stays" else 0.0001, t), t)
    firing = detector.fired(t)
    assert (firing is not None) is fires
    if firing is not None:
        assert firing.evidence["distance_km"] == pytest.approx(km, rel=0.01)
        assert firing.evidence["confirmed_by_next_fix"] == (then == "stays")
    assert detector.glitches == (then == "back")


MALFORMED = [
    b"not json",
    b"\xff\xfe",
    b"[1, 2]",
    b'{"lat": "51.9", "lon": 4.1, "ts": 1}',
    b'{"lat": 91, "lon": 4.1, "ts": 1}',
    b'{"lat": 51.9, "lon": 181, "ts": 1}',
    b'{"lat": true, "lon": 4.1, "ts": 1}',
    b'{"lat": 51.9, "lon": 4.1}',
    b'{"lat": NaN, "lon": 4.1, "ts": 1}',
    b'{"lat": 51.9, "lon": 4.1, "ts": 99999999999}',  # far in the future
    b"[" * 100_000 + b"]" * 100_000,  # too big to parse; never a RecursionError
    b"[" * 3000 + b"]" * 1000,
]


def test_malformed_fixes_are_counted_never_raised() -> None:
    detector = TravelDetector(TRK1, TRAVEL)
    detector.observe(fix(*ROTTERDAM, T0), T0)
    for i, payload in enumerate(MALFORMED):
        detector.observe(payload, T0 + 1 + i)
    assert detector.malformed == len(MALFORMED)
    assert detector.fired(T0 + 20) is None
    detector.observe(fix(41.90, 12.50, T0 + 30), T0 + 30)  # and the last good fix is still the reference
    firing = detector.fired(T0 + 30)
    assert firing is not None and firing.evidence["malformed_fixes"] == len(MALFORMED)


def test_a_jump_across_a_reconnect_fires() -> None:
    """The detector belongs to the identity, not the connection: the last fix before a disconnect
    is compared with the first after it."""
    detector = TravelDetector(TRK1, TRAVEL)
    end = drive(detector, T0, 1, 80.0, *ROTTERDAM)
    # offline for two minutes, back 900 km away
    detector.observe(fix(44.43, 26.10, end + 120), end + 120)
    assert detector.fired(end + 120) is not None


def test_schema_from_the_policy_nested_fields_ms_and_receive_time() -> None:
    settings = replace(TRAVEL, fields=cfg.GpsFields("pos.la", "pos.lo", "t"), timestamp_unit="ms")
    detector = TravelDetector(TRK1, settings)
    detector.observe(json.dumps({"pos": {"la": 51.95, "lo": 4.14}, "t": T0 * 1000}).encode(), T0)
    detector.observe(json.dumps({"pos": {"la": 48.14, "lo": 11.58}, "t": (T0 + 60) * 1000}).encode(), T0 + 60)
    assert detector.malformed == 0 and detector.fired(T0 + 60) is not None
    received = TravelDetector(TRK1, replace(TRAVEL, fields=cfg.GpsFields(timestamp=None)))
    received.observe(b'{"lat": 51.95, "lon": 4.14}', T0)
    received.observe(b'{"lat": 51.96, "lon": 4.14}', T0 + 60)
    assert received.fired(T0 + 60) is None and received.fixes == 2


def test_out_of_order_fixes_are_judged_but_never_rewind() -> None:
    detector = TravelDetector(TRK1, TRAVEL)
    detector.observe(fix(51.950, 4.14, T0 + 10), T0 + 10)
    detector.observe(fix(51.949, 4.14, T0 + 9), T0 + 10.1)  # a QoS 1 retry arriving late
    assert detector.fired(T0 + 11) is None and detector.out_of_order == 1


def test_haversine_and_hosts() -> None:
    assert haversine_km(0, 0, 0, 1) == pytest.approx(111.19, abs=0.01)
    assert haversine_km(*ROTTERDAM, *ROTTERDAM) == 0
    assert host_of("10.0.0.7:40000") == "10.0.0.7"
    assert host_of("[2001:db8::1]:8883") == "2001:db8::1"
    assert host_of("listener") == "listener"


# --- source network ---------------------------------------------------------------------------------

NETWORK = cfg.SourceNetwork()  # units: private ranges; change of /16 within 60 s


# (previous connect (address, offset) or None, this connect, offset) → reason or None
NETWORKS = [
    ("inside", None, "10.1.2.3:4000", 0, None),
    ("loopback v6", None, "[::1]:4000", 0, None),
    ("v4-mapped private", None, "[::ffff:10.1.2.3]:4000", 0, None),
    ("public address", None, "203.0.113.9:4000", 0, "outside_allowed_networks"),
    ("same /16 again", ("10.1.2.3:4000", 0), "10.1.9.9:4001", 5, None),
    ("new /16 at once", ("10.1.2.3:4000", 0), "10.200.9.9:4001", 5, "network_changed"),
    ("new /16 an hour later", ("10.1.2.3:4000", 0), "10.200.9.9:4001", 3600, None),
    ("lab listener address", None, "listener", 0, None),
]


@pytest.mark.parametrize(
    ("case", "before", "address", "at", "reason"), NETWORKS, ids=[n[0] for n in NETWORKS]
)
def test_source_network_table(
    case: str, before: tuple[str, float] | None, address: str, at: float, reason: str | None
) -> None:
    detector = NetworkDetector(TRK1, NETWORK)
    if before is not None:
        detector.observe_connect(before[0], T0 + before[1])
        assert detector.fired(T0 + before[1]) is None
    detector.observe_connect(address, T0 + at)
    firing = detector.fired(T0 + at)
    assert (firing.reason if firing else None) == reason


def test_network_change_is_measured_from_the_last_disconnect() -> None:
    detector = NetworkDetector(TRK1, NETWORK)
    detector.observe_connect("10.1.2.3:4000", T0)
    detector.observe_seen(T0 + 3000)  # connected for 50 minutes, then gone
    detector.observe_connect("10.77.0.1:4000", T0 + 3030)
    firing = detector.fired(T0 + 3030)
    assert firing is not None and firing.evidence["seconds_since_last"] == 30


def test_kinds_without_a_list_connect_from_anywhere() -> None:
    service = NetworkDetector(Identity("service", "dispatch", "fleet.local"), NETWORK)
    service.observe_connect("203.0.113.9:443", T0)
    assert service.fired(T0) is None


# --- cloning ----------------------------------------------------------------------------------------

CLONING = cfg.Cloning()  # one return, or three takeovers, within 300 s
A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"


# takeovers (old host, new host, offset) → the rule that fires, or None
TAKEOVERS = [
    ("same host reconnecting twice", [(A, A, 0), (A, A, 10)], None),
    ("same host, three times: two devices behind one NAT", [(A, A, 0), (A, A, 10), (A, A, 20)], "takeovers"),
    ("roaming A→B→C", [(A, B, 0), (B, C, 60)], None),
    ("ping-pong A→B→A", [(A, B, 0), (B, A, 20)], "threshold"),
    ("A→B, A back after the window", [(A, B, 0), (B, A, 400)], None),
    ("three takeovers spread over more than the window", [(A, B, 0), (B, C, 200), (C, A, 400)], None),
]


@pytest.mark.parametrize(("case", "takeovers", "rule"), TAKEOVERS, ids=[t[0] for t in TAKEOVERS])
def test_cloning_table(case: str, takeovers: list[tuple[str, str, float]], rule: str | None) -> None:
    detector = CloningDetector(TRK1, CLONING)
    for old, new, offset in takeovers:
        detector.observe_takeover(f"{old}:1000", f"{new}:2000", T0 + offset)
    firing = detector.fired(T0 + takeovers[-1][2])
    assert (firing.rule if firing else None) == (rule and f"detectors/cloning/{rule}")
    if rule == "threshold":
        assert firing is not None and firing.evidence["hosts"] == 2 and firing.context["holder"] == A


def test_cloning_threshold_two_needs_two_returns() -> None:
    detector = CloningDetector(TRK1, replace(CLONING, threshold=2, takeovers=10))
    hosts = [A, B, A, B]
    for i in range(1, len(hosts)):
        detector.observe_takeover(f"{hosts[i - 1]}:1", f"{hosts[i]}:2", T0 + i)
        assert (detector.fired(T0 + i) is not None) is (i == 3)


def test_a_fix_handed_over_by_another_node_is_the_start_of_the_track_here() -> None:
    """A unit that left node A for node B: B adopts A's last fix (gateway/app/cluster_sessions.py).
    Whether it arrives before B's first fix or after, a jump across the move fires; a drive on does not."""
    before = TravelDetector(TRK1, TRAVEL)
    before.adopt((*ROTTERDAM, T0), T0 + 5)
    before.observe(fix(48.14, 11.58, T0 + 60), T0 + 60)  # Munich a minute later
    assert before.fired(T0 + 60) is not None
    after = TravelDetector(TRK1, TRAVEL)
    after.observe(fix(48.14, 11.58, T0 + 60), T0 + 60)
    after.adopt((*ROTTERDAM, T0), T0 + 61)  # the older fix arrives late: judged against ours
    assert after.fired(T0 + 61) is not None
    calm = TravelDetector(TRK1, TRAVEL)
    calm.adopt((*ROTTERDAM, T0), T0)
    drive(calm, T0 + 1, 1, 80.0, *ROTTERDAM)
    assert calm.last_fix is not None and calm.last_fix[2] > T0
