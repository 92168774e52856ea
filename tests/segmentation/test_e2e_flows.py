"""`fleetgate flows` and GET /api/flows on a running gateway with a simulated fleet: every role's flows,
the PII/commercial recipients marked as the protect surface, denied attempts listed; Mermaid and a PNG
that renders (valid, not blank)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sim.fleet.enroll import enroll_fleet, register_units
from device_sim.fleet.runner import Fleet, FleetConfig
from device_sim.fleet.unit import UnitProfile
from tests.clients import V5, Paho
from tests.harness import GatewayProcess
from tests.ops.helpers import api

FAST = UnitProfile(gps_interval=0.25, engine_interval=0.5, fuel_interval=1.0, diag_interval=1.0)


@pytest.fixture(scope="module")
def fleet_ran(gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    dispatch = Paho(gateway.mqtt_port, gateway.issue("service", "dispatch"), version=V5)
    assert dispatch.connect()[0] == 0 and dispatch.subscribe("fleet/+/telemetry/#", 1) == [1]
    partners = {}
    for tier in (1, 2):
        client = Paho(gateway.mqtt_port, gateway.issue("partner", f"flow-p{tier}", "--tier", str(tier)))
        assert client.connect()[0] == 0 and client.subscribe(f"views/{tier}/#", 1) == [1]
        partners[tier] = client
    assert partners[2].subscribe("fleet/+/telemetry/#", 1) == [0x87]  # an attempt the policy denies
    time.sleep(0.6)
    ids = [f"FLOW-{uuid.uuid4().hex[:6].upper()}-{n}" for n in range(3)]
    out = tmp_path_factory.mktemp("flowfleet")
    files = enroll_fleet(gateway.https_url, gateway.root_ca, register_units(gateway.data, ids), out)

    async def drive() -> None:
        async with Fleet(FleetConfig(port=gateway.mqtt_port, profile=FAST, backoff_base=0.2), files) as fleet:
            assert await fleet.wait_online(timeout=20) == len(ids)
            await asyncio.sleep(2.0)

    asyncio.run(drive())
    time.sleep(0.6)  # one event tick records what happened
    auditor = gateway.issue("operator", "flow-aud", "--role", "auditor", "--server", gateway.https_url)
    yield {"auditor": auditor, "profile": auditor.cert.parent / "flow-aud.profile.json"}
    for client in (dispatch, *partners.values()):
        client.disconnect()


def rows_of(data: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["group"], r["action"], r["template"]): r for r in data["rows"]}


def test_flows_json_lists_every_role_and_marks_the_protect_surface(
    gateway: GatewayProcess, fleet_ran: dict[str, Any]
) -> None:
    result = gateway.cli("flows", "--json", "--profile", str(fleet_ran["profile"]))
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    rows = rows_of(data)
    gps = rows[("unit", "publish", "fleet/{unit}/telemetry/gps")]
    assert gps["messages"] > 10 and {"pii", "location"} <= set(gps["data_classes"])
    raw = rows[("service/dispatch", "receive", "fleet/{unit}/telemetry/gps")]
    assert raw["protect_surface"] and "pii" in raw["data_classes"]
    tier1 = [r for r in data["rows"] if r["group"] == "partner/flow-p1" and r["action"] == "receive"]
    assert tier1 and any("commercial" in r["data_classes"] for r in tier1)  # cargo: tier 1 sees it
    tier2 = [r for r in data["rows"] if r["group"] == "partner/flow-p2" and r["action"] == "receive"]
    assert tier2 and not any(r["protect_surface"] for r in tier2)  # the reduced view: no pii, no cargo
    assert all(r["template"].startswith("views/") for r in tier1 + tier2)
    denied = rows[("partner/flow-p2", "subscribe", "fleet/+/telemetry/#")]
    assert denied["denied"] >= 1 and denied["messages"] == 0
    surface = {e["group"] for e in data["protect_surface"]}
    assert {"service/dispatch", "partner/flow-p1"} <= surface and "partner/flow-p2" not in surface
    assert any(r["group"] == "gateway/views" and r["action"] == "publish" for r in data["rows"])


def test_flows_table_mermaid_and_svg(
    gateway: GatewayProcess, fleet_ran: dict[str, Any], tmp_path: Path
) -> None:
    profile = str(fleet_ran["profile"])
    table = gateway.cli("flows", "--profile", profile)
    assert table.code == 0 and "Protect surface" in table.stdout and "service/dispatch" in table.stdout
    mermaid = gateway.cli("flows", "--mermaid", "--profile", profile)
    assert mermaid.code == 0 and mermaid.stdout.startswith("flowchart") and "flow-p1" in mermaid.stdout
    svg_path = tmp_path / "flows.svg"
    drawn = gateway.cli("flows", "--svg", str(svg_path), "--profile", profile)
    assert drawn.code == 0, drawn.stderr
    root = ET.fromstring(svg_path.read_text(encoding="utf-8"))
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert "service/dispatch" in texts and int(root.get("width", 0)) > 200  # drawn, with its labels
    old = gateway.cli("flows", "--png", str(tmp_path / "flows.png"), "--profile", profile)
    assert old.code == 2 and "--svg" in old.stderr


def test_api_flows_is_for_operators_roles(gateway: GatewayProcess, fleet_ran: dict[str, Any]) -> None:
    status, body = api(gateway, fleet_ran["auditor"], "GET", "/api/flows")
    assert status == 200 and body["rows"]
    unit = gateway.enroll_unit(f"TRK-FLOWAPI-{uuid.uuid4().hex[:4]}")
    status, body = api(gateway, unit, "GET", "/api/flows")
    assert (status, body["code"]) == (403, "not_an_operator")
