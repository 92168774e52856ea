"""Detectors in a real gateway (`fleetgate serve`) over real mTLS: real Operations, the real audit
log, the shipped policy and its default thresholds."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients import V5, Paho
from tests.harness import GatewayProcess
from tests.ops.helpers import metric, metrics_text

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("wired"))
    gw.init()
    gw.start()
    yield gw
    gw.stop()


def audit(gw: GatewayProcess) -> list[dict[str, Any]]:
    """The audit log, read from the database (read-only; a CLI process per poll would be too slow)."""
    uri = f"file:{gw.data / 'fleetgate.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        rows = conn.execute("SELECT actor, action, subject, outcome, details FROM audit_log ORDER BY seq")
        keys = ("actor", "action", "subject", "outcome")
        return [{**dict(zip(keys, row[:4], strict=True)), "details": json.loads(row[4])} for row in rows]


def wait_for(gw: GatewayProcess, timeout: float = 10.0, **fields: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for record in audit(gw):
            if all(str(record.get(k)) == v for k, v in fields.items()):
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no audit record with {fields}:\n{gw.log()[-3000:]}")
        time.sleep(0.3)


def fix(lat: float, lon: float, ts: float) -> bytes:
    return json.dumps({"lat": lat, "lon": lon, "ts": round(ts, 3)}).encode()


def test_a_unit_reporting_a_900_km_jump_is_quarantined(wired: GatewayProcess) -> None:
    unit = Paho(wired.mqtt_port, wired.enroll_unit("TRK-JUMP"), version=V5)
    assert unit.connect()[0] == 0
    now = time.time()
    assert unit.publish("fleet/TRK-JUMP/telemetry/gps", fix(51.95, 4.14, now - 60)) == 0
    assert unit.publish("fleet/TRK-JUMP/telemetry/gps", fix(44.43, 26.10, now)) == 0  # Bucharest
    fired = wait_for(wired, action="detector.fired", actor="detector/impossible_travel")
    assert fired["subject"] == "unit/TRK-JUMP" and fired["outcome"] == "quarantined"
    assert fired["details"]["evidence"]["distance_km"] > 1500
    assert fired["details"]["rule"] == "detectors/impossible_travel/max_speed_kmh"
    wait_for(wired, action="unit.quarantine", actor="detector/impossible_travel", outcome="ok")
    # live, on the same session: telemetry is refused now, diagnostics still accepted
    assert unit.publish("fleet/TRK-JUMP/telemetry/gps", fix(44.43, 26.10, time.time())) == 0x87
    assert unit.publish("fleet/TRK-JUMP/diag/report", b"{}") == 0
    unit.disconnect()


def test_a_unit_probing_other_units_topics_is_disconnected(wired: GatewayProcess) -> None:
    creds = wired.enroll_unit("TRK-PROBE")
    reasons: list[int] = []
    for attempt in range(4):  # 15 probes a connection: under the broker's own cap of 20
        unit = Paho(wired.mqtt_port, creds, version=V5)
        assert unit.connect()[0] == 0
        try:
            for n in range(15):
                reasons.append(unit.publish(f"fleet/TRK-{attempt}{n:02d}/cmd/unlock", b"open", timeout=2))
                time.sleep(0.02)
        except TimeoutError:
            pass  # the gateway closed the connection under us
        time.sleep(0.6)  # two drains
        if not unit.disconnects.empty():
            assert unit.disconnects.get() == 0x98  # administrative action: the detector's disconnect
            break
        unit.disconnect()
    else:
        raise AssertionError(f"never disconnected by the detector:\n{wired.log()[-3000:]}")
    assert set(reasons) == {0x87}
    fired = wait_for(wired, action="detector.fired", actor="detector/denial_burst", outcome="disconnected")
    assert fired["details"]["evidence"]["count"] >= 10
    wait_for(wired, action="session.disconnect", actor="detector/denial_burst", subject="unit/TRK-PROBE")


def test_a_flooding_unit_is_throttled_then_quarantined(wired: GatewayProcess) -> None:
    """Flood as malware would: ~1000 messages a second, reconnecting at once whenever cut off."""
    creds = wired.enroll_unit("TRK-FLOOD")
    deadline = time.monotonic() + 20
    quarantined = False
    while not quarantined and time.monotonic() < deadline:
        unit = Paho(wired.mqtt_port, creds, version=V5)
        assert unit.connect()[0] == 0
        started = time.monotonic()
        while unit.disconnects.empty() and time.monotonic() - started < 2:
            for _ in range(20):  # paced, so paho's own queue does not hide that the gateway hung up
                unit.client.publish("fleet/TRK-FLOOD/telemetry/engine", b"{}", qos=0)
            time.sleep(0.02)
        unit.disconnect()
        quarantined = any(
            r["action"] == "unit.quarantine" and r["actor"] == "detector/publish_rate" for r in audit(wired)
        )
    records = [r for r in audit(wired) if r["actor"] == "detector/publish_rate"]
    steps = [r["details"]["response"] for r in records if r["action"] == "detector.fired"]
    assert steps[:3] == ["alert", "throttle", "quarantine"], records
    throttle = next(r for r in records if r["action"] == "detector.fired" and r["outcome"] == "throttled")
    assert throttle["details"]["result"]["factor"] == 0.1
    assert any(r["action"] == "unit.quarantine" and r["outcome"] == "ok" for r in records)
    assert metric(wired, "detector_firings", detector="publish_rate") >= 3
    # every configured detector is exported, at 0 until it fires, so a rate() alert has a series
    assert 'fleetgate_detector_firings_total{detector="cloning"} 0.0' in metrics_text(wired)


def test_nothing_fires_for_a_quiet_unit(wired: GatewayProcess) -> None:
    unit = Paho(wired.mqtt_port, wired.enroll_unit("TRK-CALM"), version=V5)
    assert unit.connect()[0] == 0
    start = time.time()
    for i in range(20):
        assert unit.publish("fleet/TRK-CALM/telemetry/gps", fix(51.95, 4.14 + i * 1e-4, start + i * 0.1)) == 0
        time.sleep(0.05)
    unit.disconnect()
    time.sleep(0.6)
    fired = [r for r in audit(wired) if r["action"] == "detector.fired"]
    assert not [r for r in fired if r["subject"] == "unit/TRK-CALM"]
