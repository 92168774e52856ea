"""The console's per-unit watch and its drawing helpers, without sockets: time and payloads by hand."""

from __future__ import annotations

import gc
import json

from gateway.admin.console_html import esc, frame, graticule, project
from gateway.context.unit_watch import REDACTED, UNREAD_FIXES, Fix, UnitWatch, parse_fix, redacted
from gateway.policy.data_classes import parse_data_classes
from gateway.policy.peer import Peer
from pki.names import Identity

UNIT = Peer("10.0.0.1:5000", Identity("unit", "TRK-1", "fleet.local"))
DISPATCH = Peer("10.0.0.2:5000", Identity("service", "dispatch", "fleet.local"))
CLASSES = parse_data_classes(
    {
        "pii": {"fields": ["driver_name", "driver.phone"], "names_anywhere": True},
        "location": {"fields": ["lat", "lon"]},
    },
    "policy.yaml",
)


def watch() -> UnitWatch:
    return UnitWatch(known=lambda unit: unit.startswith("TRK-"), per_unit=3, max_payload=64)


def test_the_buffer_keeps_the_last_messages_of_known_units_only_and_cuts_payloads() -> None:
    w = watch()
    for n in range(5):
        w.observe(UNIT, "fleet/TRK-1/telemetry/engine", b"x" * 100 + bytes([n]), float(n))
    w.observe(UNIT, "fleet/STRANGER/telemetry/engine", b"{}", 9.0)
    w.observe(UNIT, "views/2/fleet/u-1/gps", b"{}", 9.0)
    traffic = w.traffic("TRK-1")
    assert traffic is not None
    assert [m.at for m in traffic.messages] == [2.0, 3.0, 4.0]
    assert all(len(m.payload) == 64 and m.size == 101 for m in traffic.messages)
    assert [m.sender for m in traffic.messages] == ["unit/TRK-1"] * 3
    assert set(w.units) == {"TRK-1"}


def test_buffered_messages_are_nothing_the_garbage_collector_keeps_scanning() -> None:
    # Each unit's last messages turn over all day; held as objects the collector tracks, they were
    # promoted to its old generation by the thousand a second and made a full collection (400 ms
    # at 10,000 units) run every few seconds. Plain tuples of strings, numbers and bytes are untracked
    # the first time the collector looks at them.
    w = watch()
    w.observe(UNIT, "fleet/TRK-1/telemetry/engine", b"{}", 1.0)
    w.observe(DISPATCH, "fleet/TRK-1/control/route", b"{}", 2.0)
    gc.collect()
    traffic = w.traffic("TRK-1")
    assert traffic is not None and len(traffic.kept) == 2
    assert not any(gc.is_tracked(kept) for kept in traffic.kept)
    assert traffic.messages[-1].sender == "service/dispatch"


def test_control_liveness_counts_both_directions_and_gps_keeps_the_last_good_fix() -> None:
    w = watch()
    w.observe(DISPATCH, "fleet/TRK-1/control/brake", b"\x00cmd", 10.0)
    w.observe(UNIT, "fleet/TRK-1/control/brake/ack", b"ack", 10.5)
    w.observe(UNIT, "fleet/TRK-1/telemetry/gps", json.dumps({"lat": 51.9, "lon": 4.4}).encode(), 11.0)
    w.observe(UNIT, "fleet/TRK-1/telemetry/gps", b'{"lat": 95, "lon": 4}', 12.0)  # impossible: ignored
    traffic = w.traffic("TRK-1")
    assert traffic is not None
    assert (traffic.control_at, traffic.control_sender) == (10.5, "unit/TRK-1")
    assert traffic.control_topic == "fleet/TRK-1/control/brake/ack"
    assert w.fixes() == {"TRK-1": Fix(51.9, 4.4, 11.0)}


def test_the_last_good_fix_survives_any_run_of_bad_ones_whenever_the_console_asks() -> None:
    w = watch()
    gps = "fleet/TRK-1/telemetry/gps"
    w.observe(UNIT, gps, b'{"lat": 1, "lon": 1}', 1.0)
    w.observe(UNIT, gps, b'{"lat": 2, "lon": 2}', 2.0)  # the newest good one of those not yet read
    for n in range(3 * UNREAD_FIXES):  # more bad fixes than are kept unread: parsed on the way
        w.observe(UNIT, gps, b'{"lat": "garbage"}', 3.0 + n)
        w.observe(UNIT, gps, bytes(100), 3.5 + n)  # binary: not even kept
    assert w.fixes() == {"TRK-1": Fix(2.0, 2.0, 2.0)}
    w.observe(UNIT, gps, b'{"lat": 3, "lon": 3}', 50.0)
    w.observe(UNIT, gps, b'{"lat": 4, "lon": 4, "pad": "' + b"x" * 600 + b'"}', 51.0)  # long: parsed now
    w.observe(UNIT, gps, b'{"lat": 999, "lon": 3}', 52.0)
    assert w.fixes() == {"TRK-1": Fix(4.0, 4.0, 51.0)}
    w.observe(UNIT, gps, b'{"lat": 5, "lon": 5}', 53.0)
    w.observe(UNIT, "fleet/TRK-1/telemetry/gps/extra", b'{"lat": 6, "lon": 6}', 54.0)  # not the fix topic
    traffic = w.traffic("TRK-1")
    assert traffic is not None and traffic.fix == Fix(5.0, 5.0, 53.0)


def test_a_fix_must_be_two_finite_numbers() -> None:
    assert parse_fix(b'{"lat": 1, "lon": 2}', 0) == Fix(1.0, 2.0, 0)
    for bad in (
        b"[1, 2]",
        b'{"lat": "1", "lon": 2}',
        b'{"lat": true, "lon": 2}',
        b"nope",
        b'{"lat": NaN, "lon": 1}',
    ):
        assert parse_fix(bad, 0) is None, bad


def test_pii_is_redacted_at_any_depth_for_readers_without_it() -> None:
    payload = json.dumps(
        {"lat": 1, "driver_name": "Ada", "trip": {"driver": {"phone": "+31"}, "DRIVER-NAME": "x"}}
    )
    shown = json.loads(redacted("fleet/TRK-1/telemetry/gps", payload.encode(), CLASSES))
    assert shown == {
        "lat": 1,
        "driver_name": REDACTED,
        "trip": {"driver": {"phone": REDACTED}, "DRIVER-NAME": REDACTED},
    }
    assert redacted("fleet/TRK-1/telemetry/gps", b"not json: Ada", CLASSES) == REDACTED  # nothing known safe


def test_text_from_strangers_is_escaped_and_controls_made_visible() -> None:
    assert esc('<img src=x onerror="alert(1)">') == "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"
    assert esc("TRK-1\n\u202eevil") == "TRK-1\\n\\u202eevil"
    assert esc(None) == ""


def test_the_map_projection_keeps_north_up_and_east_right() -> None:
    points = project({"R": Fix(51.92, 4.48, 0), "A": Fix(52.37, 4.89, 0), "U": Fix(52.09, 5.12, 0)})
    assert points["U"][0] > points["A"][0] > points["R"][0]
    assert points["A"][1] < points["U"][1] < points["R"][1]
    assert project({}) == {}
    ((x, y),) = project({"only": Fix(10, 10, 0)}).values()  # one unit: in the middle, no division by zero
    assert 0 < x < 960 and 0 < y < 600


def test_an_unknown_unit_id_is_looked_up_once_per_interval_not_per_message() -> None:
    registered: set[str] = set()
    asked: list[str] = []

    def known(unit: str) -> bool:
        asked.append(unit)
        return unit in registered

    w = UnitWatch(known=known)
    for t in (0.0, 1.0, 2.0):
        w.observe(DISPATCH, "fleet/TRK-NEW/control/brake", b"x", t)
    assert asked == ["TRK-NEW"] and w.traffic("TRK-NEW") is None
    registered.add("TRK-NEW")  # `fleetgate unit add` meanwhile
    w.observe(DISPATCH, "fleet/TRK-NEW/control/brake", b"x", 5.0)  # still within the interval
    assert w.traffic("TRK-NEW") is None
    w.observe(DISPATCH, "fleet/TRK-NEW/control/brake", b"x", 10.5)
    assert len(asked) == 2 and w.traffic("TRK-NEW") is not None


def test_the_graticule_labels_whole_steps_around_the_fleet() -> None:
    box = frame({"R": Fix(51.92, 4.48, 0), "A": Fix(52.37, 4.89, 0), "U": Fix(52.09, 5.12, 0)})
    assert box is not None
    drawn = graticule(box)
    assert "52.2°N" in drawn and "5°E" in drawn and "e-" not in drawn  # 0.1° steps, no float noise
    south, north, west, east = box.bounds()
    assert south < 51.92 and north > 52.37 and west < 4.48 and east > 5.12
