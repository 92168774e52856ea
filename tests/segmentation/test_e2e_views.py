"""Partner views over real mTLS: a simulated fleet drives, three partners of three tiers watch.

Every message a partner receives is inspected: tier 2 never sees a pii or commercial field, sees
locations on the 0.1° grid and pseudonymised unit ids, and cannot subscribe to raw unit topics; tier 1
gets the full view (exact positions, cargo, real unit ids); tier 3 is held to its rate (1/s, burst 5).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from device_sim.fleet.enroll import enroll_fleet, register_units
from device_sim.fleet.runner import Fleet, FleetConfig
from device_sim.fleet.unit import UnitProfile
from tests.clients import V5, V311, Paho, Received
from tests.harness import GatewayProcess
from tests.ops.helpers import metric

FAST = UnitProfile(gps_interval=0.25, engine_interval=0.5, fuel_interval=1.0, diag_interval=1.0)
PII = {"driver_id", "driver_name", "driver_phone", "driver"}
COMMERCIAL = {"cargo", "rate", "customer", "order"}
RUN_SECONDS = 4.0
UNITS = 4


def on_grid(value: float, grid: str = "0.1") -> bool:
    return Decimal(str(value)) % Decimal(grid) == 0


@pytest.fixture(scope="module")
def observed(
    gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[int, list[Received]]]:
    partners = {}
    for tier in (1, 2, 3):
        creds = gateway.issue("partner", f"p{tier}-{uuid.uuid4().hex[:4]}", "--tier", str(tier))
        client = Paho(gateway.mqtt_port, creds, version=V5 if tier != 2 else V311)
        assert client.connect()[0] == 0
        partners[tier] = client
    # tier 2 first tries the raw unit topics: refused (0x87 on 5.0; 3.1.1 says 0x80)
    v5 = Paho(gateway.mqtt_port, gateway.issue("partner", "raw-try", "--tier", "2"), version=V5)
    assert v5.connect()[0] == 0
    assert v5.subscribe("fleet/+/telemetry/#", 1) == [0x87]
    assert v5.subscribe("views/1/#", 1) == [0x87]  # nor another tier's views
    v5.disconnect()
    for tier, client in partners.items():
        assert client.subscribe(f"views/{tier}/#", 1) == [1]
    time.sleep(0.6)  # the gateway notices subscribed tiers on its event tick (0.25 s)
    tag = uuid.uuid4().hex[:6].upper()
    ids = [f"SIM-{tag}-{n}" for n in range(UNITS)]
    out = tmp_path_factory.mktemp("fleet")
    files = enroll_fleet(gateway.https_url, gateway.root_ca, register_units(gateway.data, ids), out)
    config = FleetConfig(port=gateway.mqtt_port, profile=FAST, backoff_base=0.2)

    async def drive() -> None:
        async with Fleet(config, files) as fleet:
            assert await fleet.wait_online(timeout=20) == UNITS
            await asyncio.sleep(RUN_SECONDS)

    started = time.monotonic()
    asyncio.run(drive())
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    got = {tier: client.quiet(0.3) for tier, client in partners.items()}
    got[0] = [Received("elapsed", str(elapsed).encode(), 0, False)]  # the run's length, for the rate check
    gateway.fleet_ids = ids  # type: ignore[attr-defined]
    yield got
    for client in partners.values():
        client.disconnect()


def bodies(messages: list[Received]) -> list[dict[str, object]]:
    out = []
    for m in messages:
        body = json.loads(m.payload)
        assert isinstance(body, dict)
        out.append(body)
    return out


def test_tier2_never_sees_pii_or_commercial_and_gets_coarse_locations(
    observed: dict[int, list[Received]], gateway: GatewayProcess
) -> None:
    messages = observed[2]
    assert len(messages) >= UNITS * 8, len(messages)  # gps 4/s per unit over the run: plenty
    gps = 0
    for m, body in zip(messages, bodies(messages), strict=True):
        assert m.topic.startswith("views/2/fleet/u-"), m.topic  # pseudonymised unit level
        assert not (set(body) & (PII | COMMERCIAL)), (m.topic, body)
        assert not any(unit in m.payload.decode() or unit in m.topic for unit in gateway.fleet_ids)  # type: ignore[attr-defined]
        if "lat" in body:
            gps += 1
            assert on_grid(body["lat"]) and on_grid(body["lon"]), body  # type: ignore[arg-type]
        assert set(body) <= {"lat", "lon", "position", "ts", "status", "eta", "speed_kmh", "heading"}
    assert gps >= UNITS * 4
    assert not any(m.topic.endswith("/diag/report") for m in messages)  # not a view source


def test_tier1_gets_the_full_view(observed: dict[int, list[Received]], gateway: GatewayProcess) -> None:
    messages = observed[1]
    seen_units = {m.topic.split("/")[3] for m in messages}
    assert seen_units == set(gateway.fleet_ids)  # type: ignore[attr-defined]  # real unit ids
    all_fields = set().union(*(set(b) for b in bodies(messages)))
    assert {"lat", "lon", "cargo", "rpm", "level_pct", "speed_kmh"} <= all_fields
    assert not all_fields & PII  # tier 1 has no pii class either
    exact = [b for b in bodies(messages) if "lat" in b and not on_grid(b["lat"])]  # type: ignore[arg-type]
    assert exact, "tier 1 locations are not coarsened"


def test_tier3_is_held_to_its_rate(observed: dict[int, list[Received]], gateway: GatewayProcess) -> None:
    elapsed = float(observed[0][0].payload)
    messages = observed[3]
    # policy: tier3 1 message/s, burst 5; the fleet offered ~UNITS * 7.5 tracking messages per second
    assert 3 <= len(messages) <= 5 + 1 * (elapsed + 1.5), (len(messages), elapsed)
    for body in bodies(messages):
        assert set(body) <= {"ts", "status", "eta", "speed_kmh", "heading"}, body
    assert metric(gateway, "view_rate_limited", tier="3") > 0
