"""QoS 1 under overload, end to end over mTLS: a PUBACK is a promise, and the gateway keeps it.

1. A deliberately slow subscriber (it takes 10 messages a second) and 50 units publishing telemetry
   at QoS 1 (250 msg/s in all, each unit with at most 10 unacknowledged): the gateway holds the units
   back (their PUBACKs wait, so their windows fill and they send less) instead of dropping what it
   acknowledged; no unit is disconnected; every acknowledged message arrives once the subscriber
   catches up. The control channel (dispatch → unit → ack) of a bystander unit, and of a held-back
   unit, is timed before and during the overload: the figures are REPORTED (printed and recorded),
   never asserted, on this shared machine. Then the subscriber stops acknowledging altogether (it
   stalls): only then, past its configured bound, does the gateway drop, and it counts exactly what
   it dropped and audits it once.
2. A persistent service is offline while 100 units publish at QoS 1 (10 s here;
   FLEETGATE_OFFLINE_SECONDS=60 for the minute the issue names): when it comes back it receives every
   acknowledged message; with a bound below what was published, exactly the oldest `bound` messages,
   and the rest counted as dropped.

Checked against the previous gateway (the tests copied onto it, with only the limits it knows):
1. fails: every PUBLISH acknowledged at once (none held back), then acknowledged messages missing;
2. fails with the defaults (half the acknowledged messages missing: its queue held 1,000), and with
   a bound of 500 it kept the right 500 but counted the rest under no queue_full_qos1 and audited nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_sim.load.client import ClientIdentity
from device_sim.load.identities import BulkIssuer, unit_ids
from device_sim.load.swarm import identities_in
from tests.hardening.common import record_figure, rss_kib
from tests.hardening.fleet_clients import PERSISTENT, Dispatch, Subscriber, Unit, connect, quiet, until
from tests.harness import GatewayProcess
from tests.ops.helpers import metric

UNITS = 100
OFFLINE_SECONDS = float(os.environ.get("FLEETGATE_OFFLINE_SECONDS", "10"))


@dataclass
class Fleet:
    gw: GatewayProcess
    ca: Path
    units: list[ClientIdentity]
    services: dict[str, ClientIdentity]

    def serve(self, limits: dict[str, Any]) -> GatewayProcess:
        """(Re)start the gateway with these `limits` over the embedded defaults."""
        config = self.gw.root / "gateway.yaml"
        config.write_text(yaml.safe_dump({"limits": limits}) if limits else "")
        self.gw.stop()
        self.gw.extra_args = ("--config", str(config))
        self.gw.start()
        return self.gw

    async def unit(self, index: int, window: int = 20) -> Unit:
        identity = self.units[index]
        unit = Unit(identity.ident, window)
        await connect(self.gw.mqtt_port, identity, self.ca, unit.peer)
        return unit

    async def subscriber(self, rate: float | None, **client: Any) -> Subscriber:
        sub = Subscriber("analytics", rate, **client)
        await connect(self.gw.mqtt_port, self.services["analytics"], self.ca, sub.peer)
        return sub


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("backpressure")
    gw = GatewayProcess(root)
    gw.init()
    with BulkIssuer(gw.data) as issuer:
        issuer.units(unit_ids(UNITS + 1), root / "units")
        issuer.roles("service", ["analytics", "dispatch"], root / "services")
    units = identities_in(root / "units")
    yield Fleet(gw, gw.root_ca, [units[u] for u in unit_ids(UNITS + 1)], identities_in(root / "services"))
    gw.stop()


async def publish_for(units: list[Unit], seconds: float, rate: float) -> None:
    """Every unit publishes `rate` telemetry messages a second (or skips one when its window is full)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for unit in units:
            unit.publish()
        await asyncio.sleep(1 / rate)


def queue_audit_records(gw: GatewayProcess) -> list[dict[str, Any]]:
    out = gw.cli("events", "--json")
    assert out.code == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return [r for r in records if r.get("action") == "mqtt.queue"]


# --- 1. a slow subscriber ---------------------------------------------------------------------------

SLOW = {"queue_high_water": 100, "max_queued_messages": 300, "subscriber_stall_timeout": 3}


async def test_a_slow_subscriber_slows_its_publishers_and_only_a_stalled_one_past_its_bound_loses(
    fleet: Fleet,
) -> None:
    gw = fleet.serve(SLOW)
    sub = await fleet.subscriber(rate=10.0)
    await sub.peer.subscribe("fleet/+/telemetry/#")
    sub.start()
    dispatch = Dispatch()
    await connect(gw.mqtt_port, fleet.services["dispatch"], fleet.ca, dispatch.peer)
    await dispatch.peer.subscribe("fleet/+/control/+/ack")
    units = list(await asyncio.gather(*(fleet.unit(i, window=10) for i in range(50))))
    bystander = await fleet.unit(50)
    for unit in (*units, bystander):
        await unit.peer.subscribe(f"fleet/{unit.ident}/control/+")
    watched = [bystander.ident, units[0].ident]

    # Control round trips with nothing else going on: the baseline.
    await dispatch.command(watched, 2.0)
    baseline = {u: len(dispatch.rtt_ms.get(u, [])) for u in watched}

    # Phase 1: 50 units offer 250 msg/s at QoS 1; the subscriber takes 10.
    await asyncio.gather(publish_for(units, 6.0, 5.0), dispatch.command(watched, 6.0))
    sent = sum(u.next_seq for u in units)
    acked_while_slow = sum(len(u.acked) for u in units)
    # Read off the loop: a blocking scrape would stop the subscriber acknowledging, and on a loaded
    # machine that pause alone can pass the 3 s stall timeout and turn phase 2 into phase 3.
    held_now = await asyncio.to_thread(metric, gw, "publishes_held_now")
    holding = await asyncio.to_thread(metric, gw, "sessions_holding")
    skipped = sum(u.skipped for u in units)
    assert skipped > 0 and acked_while_slow < sent  # slowed: PUBACKs came at the subscriber's pace
    assert all(not u.peer.lost and u.peer.disconnect is None for u in (*units, bystander))  # not cut

    # Phase 2: the subscriber catches up. Every acknowledged message arrives, in each unit's order.
    sub.rate = None
    assert await until(lambda: not any(u.pending for u in units), 60), "units still waiting for PUBACKs"

    def caught_up() -> bool:  # a loaded machine can starve the gateway for seconds: wait for it
        got = sub.by_topic()
        return all(len(got.get(u.topic, [])) >= len(u.acked) for u in units)

    await until(caught_up, 60)
    await quiet(sub)  # and then for anything more (a duplicate would show below)
    got = sub.by_topic()
    for unit in units:
        assert not unit.refused
        assert got.get(unit.topic, []) == sorted(unit.acked) == list(range(unit.next_seq)), (
            unit.ident,
            metric(gw, "subscribers_stalled"),
            metric(gw, "drops", reason="queue_full_qos1"),
        )
    assert metric(gw, "drops", reason="queue_full_qos1") == 0
    assert not queue_audit_records(gw)

    # Phase 3: the subscriber stops acknowledging (it still reads and pings): after the stall timeout
    # it holds nobody back, its queue runs to its bound of 300, and what comes after is dropped.
    taken_before = len(sub.taken)
    acked_before = {u.ident: len(u.acked) for u in units}
    sub.rate = 0
    await publish_for(units, 6.0, 5.0)
    assert await until(lambda: not any(u.pending for u in units), 30)
    dropped = metric(gw, "drops", reason="queue_full_qos1")
    sub.rate = None
    acked_after = sum(len(u.acked) - acked_before[u.ident] for u in units)
    await until(lambda: len(sub.taken) - taken_before >= acked_after - dropped, 60)  # all it kept
    await quiet(sub)
    taken = sub.taken[taken_before:]
    assert metric(gw, "subscribers_stalled") >= 1
    assert dropped > 0 and len(taken) + dropped == acked_after  # counted: exactly what did not arrive
    assert len(taken) >= SLOW["max_queued_messages"]  # nothing dropped before the queue held its bound
    records = queue_audit_records(gw)
    assert len(records) == 1 and records[0]["subject"] == "analytics"  # one record, not one per message
    assert records[0]["outcome"] == "dropped"  # as docs/operations.md says (it was once "refused")
    assert all(not u.peer.lost and u.peer.disconnect is None for u in units)

    figures = {
        "units": len(units),
        "offered_per_s": 250,
        "subscriber_per_s": 10,
        "phase1_sent": sent,
        "phase1_acked": acked_while_slow,
        "phase1_sends_skipped_window_full": skipped,
        "phase1_held_unacked_at_end": held_now,
        "phase1_sessions_holding": holding,
        "phase3_acked": acked_after,
        "phase3_delivered": len(taken),
        "phase3_dropped_past_bound": dropped,
        "control_rtt_bystander_idle": dispatch.summary(bystander.ident, 0, baseline[bystander.ident]),
        "control_rtt_bystander_overload": dispatch.summary(bystander.ident, baseline[bystander.ident]),
        "control_rtt_held_unit_idle": dispatch.summary(units[0].ident, 0, baseline[units[0].ident]),
        "control_rtt_held_unit_overload": dispatch.summary(units[0].ident, baseline[units[0].ident]),
    }
    print("slow subscriber:", json.dumps(figures))
    record_figure("backpressure_slow_subscriber", **figures)
    for peer in (sub.peer, dispatch.peer, *(u.peer for u in (*units, bystander))):
        peer.close()
    sub.stop()


# --- 2. an offline persistent service ----------------------------------------------------------------


@pytest.mark.parametrize("bound", [None, 500], ids=["defaults", "bound-500"])
async def test_an_offline_service_gets_every_acknowledged_message_or_exactly_what_its_bound_kept(
    fleet: Fleet, bound: int | None
) -> None:
    limits = {} if bound is None else {"max_queued_messages": bound, "queue_high_water": bound // 2}
    gw = fleet.serve(limits)
    away = await fleet.subscriber(None, clean_start=False, properties=PERSISTENT)
    await away.peer.subscribe("fleet/+/telemetry/#")
    away.peer.close()
    await asyncio.sleep(0.3)
    units = list(await asyncio.gather(*(fleet.unit(i, window=50) for i in range(UNITS))))
    rss_before = rss_kib(gw)
    started = time.monotonic()
    await publish_for(units, OFFLINE_SECONDS, 2.0)
    assert await until(lambda: not any(u.pending for u in units), 60), "units still waiting for PUBACKs"
    publish_seconds = time.monotonic() - started
    rss_offline = rss_kib(gw)
    acked = sum(len(u.acked) for u in units)
    assert not any(u.refused for u in units) and acked == sum(u.next_seq for u in units)

    back = await fleet.subscriber(None, clean_start=False, properties=PERSISTENT)
    assert back.peer.connack.result().session_present
    await back.peer.subscribe("fleet/+/telemetry/#")  # the same filter again: no duplicate deliveries
    back.start()
    await quiet(back)
    got = back.by_topic()
    dropped = metric(gw, "drops", reason="queue_full_qos1")
    if bound is None:
        for unit in units:
            assert got.get(unit.topic, []) == unit.acked == list(range(unit.next_seq)), unit.ident
        assert dropped == 0 and not queue_audit_records(gw)
    else:
        # The policy: the oldest `bound` messages are kept, every later one refused and counted.
        assert len(back.taken) == bound and dropped == acked - bound
        for unit in units:
            mine = got.get(unit.topic, [])
            assert mine == list(range(len(mine))), unit.ident  # a prefix of what the unit published
        records = [r for r in queue_audit_records(gw) if r["subject"] == "analytics"]
        assert len(records) == 1
    figures = {
        "units": UNITS,
        "seconds": round(publish_seconds, 1),
        "acked": acked,
        "bound": bound or 100_000,
        "delivered_on_return": len(back.taken),
        "dropped": dropped,
        "gateway_rss_kib_before": rss_before,
        "gateway_rss_kib_offline_queue_full": rss_offline,
    }
    print("offline service:", json.dumps(figures))
    record_figure("backpressure_offline_service", **figures)
    for peer in (back.peer, *(u.peer for u in units)):
        peer.close()
    back.stop()
