"""The flow map's feed from the running gateway (gateway/context/flow_feed.py), without sockets: what
the publish observer folds, and what each event tick records and classifies."""

from __future__ import annotations

import gc
import json

from gateway.broker.limits import SessionInfo
from gateway.context.flow_feed import FlowFeed
from gateway.policy.data_classes import parse_data_classes
from gateway.policy.peer import Peer
from pki.names import Identity

CLASSES = parse_data_classes({"pii": {"fields": ["driver_name"]}}, "policy.yaml")
TEMPLATE = "fleet/{unit}/telemetry/gps"


def unit(n: int) -> Peer:
    return Peer(f"10.0.0.{n}:5000", Identity("unit", f"TRK-{n}", "fleet.local"))


def fix(**extra: object) -> bytes:
    return json.dumps({"lat": 51.9, "lon": 4.5, **extra}).encode()


def publish_row(feed: FlowFeed, now: float) -> tuple[int, int, int, frozenset[str]]:
    (row,) = [r for r in feed.recorder.snapshot(now).rows if r.action == "publish"]
    assert (row.group, row.template) == ("unit", TEMPLATE)
    return row.messages, row.bytes, row.identities, row.data_classes


def test_every_message_is_counted_once_and_folded_per_identity_and_topic() -> None:
    feed = FlowFeed(CLASSES)
    payload = fix()
    for n in range(1, 4):
        for _ in range(10):
            feed.observe(unit(n), f"fleet/TRK-{n}/telemetry/gps", payload, 100.0)
    assert len(feed._tallies) == 3  # one entry per (identity, topic), not one per message
    gc.collect()
    assert not any(gc.is_tracked(k) or gc.is_tracked(v) for k, v in feed._tallies.items())
    feed.tick([], 100.25)
    assert publish_row(feed, 101.0)[:3] == (30, 30 * len(payload), 3)
    feed.tick([], 100.5)  # nothing new: nothing recorded twice
    assert publish_row(feed, 101.0)[0] == 30


def test_each_tick_reads_a_few_payloads_per_template_taking_turns_among_the_units() -> None:
    # TRK-5 alone sends a driver's name. With one payload read per template and tick, it is read
    # within as many ticks as there are units on the template, whatever order they arrive in.
    feed = FlowFeed(CLASSES, per_template=1)
    now = 100.0
    for _ in range(5):
        for n in range(1, 6):
            extra = {"driver_name": "J. Doe"} if n == 5 else {}
            feed.observe(unit(n), f"fleet/TRK-{n}/telemetry/gps", fix(**extra), now)
        now += 0.25
        feed.tick([], now)
    assert "pii" in publish_row(feed, now)[3]
    quiet = FlowFeed(CLASSES, per_template=1)
    for n in range(1, 5):
        quiet.observe(unit(n), f"fleet/TRK-{n}/telemetry/gps", fix(), 100.0)
    quiet.tick([], 100.25)
    assert "pii" not in publish_row(quiet, 101.0)[3]


ANALYTICS = SessionInfo(
    "analytics",
    Peer("10.0.0.9:5000", Identity("service", "analytics", "fleet.local")),
    True,
    ("fleet/+/telemetry/#",),
    0,
    0,
    100.0,
    0,
)


def test_a_service_receiving_every_units_telemetry_gets_every_message_in_one_receive_row() -> None:
    feed = FlowFeed(CLASSES)
    analytics = ANALYTICS
    for n in range(1, 51):
        feed.observe(unit(n), f"fleet/TRK-{n}/telemetry/gps", fix(), 100.0)
        feed.observe(unit(n), f"fleet/TRK-{n}/state", b"{}", 100.0)  # not analytics's
    feed.tick([], 100.25, [analytics])
    (row,) = [r for r in feed.recorder.snapshot(101.0).rows if r.action == "receive"]
    assert (row.group, row.template, row.messages, row.identities) == ("service/analytics", TEMPLATE, 50, 1)
    assert row.bytes == 50 * len(fix())


def test_a_stepped_tick_pauses_between_slices_and_what_comes_in_a_pause_is_the_next_ticks() -> None:
    # The running gateway lets the event loop serve reads at each pause (Gateway.event_tick).
    feed = FlowFeed(CLASSES)
    for n in range(1, 1001):
        feed.observe(unit(n), f"fleet/TRK-{n}/telemetry/gps", fix(), 100.0)
    pauses = 0
    for _ in feed.tick_steps([], 100.25, [ANALYTICS], size=300):
        pauses += 1
        feed.observe(unit(1), "fleet/TRK-1/telemetry/gps", fix(), 100.3)  # arrives during the pause
    assert pauses == 6  # 1,000 (unit, topic)s published and 1,000 topics received: 3 slices each
    snapshot = feed.recorder.snapshot(101.0)
    publish = publish_row(feed, 101.0)
    (receive,) = [r for r in snapshot.rows if r.action == "receive"]
    assert (publish[0], publish[2], receive.messages) == (1000, 1000, 1000)
    feed.tick([], 100.5)
    assert publish_row(feed, 101.0)[0] == 1000 + pauses  # counted once, by the tick after
