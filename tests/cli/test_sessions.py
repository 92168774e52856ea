"""`fleetgate session list|kick` against a running gateway, through the CLI and its admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients import V5, Paho
from tests.harness import Credentials, GatewayProcess, run_cli
from tests.ops.helpers import api


@pytest.fixture(scope="module")
def ops(gateway: GatewayProcess) -> Path:
    creds = gateway.issue("operator", "kim", "--role", "ops", "--server", gateway.https_url)
    return creds.cert.parent / "kim.profile.json"


def _sessions(profile: Path, *extra: str) -> list[dict[str, object]]:
    listed = run_cli("session", "list", "--profile", str(profile), "--json", *extra)
    assert listed.code == 0, listed.stderr
    rows = listed.json()
    assert isinstance(rows, list)
    return rows


def test_list_shows_who_is_connected_and_kick_closes_one_session(gateway: GatewayProcess, ops: Path) -> None:
    unit: Credentials = gateway.enroll_unit("TRK-KICK")
    client = Paho(gateway.mqtt_port, unit, version=V5)
    assert client.connect()[0] == 0
    try:
        [row] = _sessions(ops, "--identity", "unit/TRK-KICK")
        assert row["connected"] is True and row["client_id"] == "TRK-KICK"
        assert _sessions(ops, "--kind", "partner") == []

        refused = run_cli("session", "kick", "TRK-KICK", "--profile", str(ops))
        assert refused.code == 1 and "vehicle-control" in refused.stderr and "--force" in refused.stderr
        assert client.disconnects.empty()  # nothing was closed

        kicked = run_cli("session", "kick", "TRK-KICK", "--force", "--reason", "stuck", "--profile", str(ops))
        assert kicked.code == 0, kicked.stderr
        assert "may reconnect" in kicked.stdout
        assert client.disconnects.get(timeout=5) == 0x98  # administrative action
    finally:
        client.client.loop_stop()

    # nothing was revoked: the unit comes straight back (paho may have reconnected by itself already)
    again = Paho(gateway.mqtt_port, unit, version=V5)
    assert again.connect()[0] == 0
    again.client.disconnect()
    again.client.loop_stop()


def test_kick_of_a_client_that_is_not_connected_is_not_found(gateway: GatewayProcess, ops: Path) -> None:
    missing = run_cli("session", "kick", "NOBODY-1", "--profile", str(ops))
    assert missing.code == 4
    assert missing.stderr.startswith("error: no client NOBODY-1 is connected")


def test_an_auditor_may_list_but_not_kick(gateway: GatewayProcess) -> None:
    auditor = gateway.issue("operator", "aud", "--role", "auditor", "--server", gateway.https_url)
    status, answer = api(gateway, auditor, "POST", "/api/sessions/TRK-KICK/kick", {"confirm": True})
    assert (status, answer["code"]) == (403, "role_lacks_right")
    assert api(gateway, auditor, "GET", "/api/sessions")[0] == 200
