"""Partner views over real mTLS, hostile payloads: PII nested under a classified field (security review
finding 7) and one chatty unit against a tier's rate (finding 21)."""

from __future__ import annotations

import json
import threading
import time
import uuid

from tests.clients import V5, V311, Paho
from tests.harness import GatewayProcess

REVIEW_PAYLOAD = {
    "ts": 1765000000,
    "lat": 52.123456,
    "lon": 4.654321,
    "driver_name": "Jan Jansen",
    "status": {
        "state": "loading",
        "driver_name": "Jan Jansen",
        "driver_phone": "+31 6 12345678",
        "note": "{unit} at Depot 7, 52.123456,4.654321",
    },
    "eta": "2026-12-07T10:00Z",
}


def _partner(gateway: GatewayProcess, tier: int, version: object = V5) -> Paho:
    creds = gateway.issue("partner", f"acme{tier}-{uuid.uuid4().hex[:4]}", "--tier", str(tier))
    client = Paho(gateway.mqtt_port, creds, version=version)  # type: ignore[arg-type]
    assert client.connect()[0] == 0
    assert client.subscribe(f"views/{tier}/#", 1) == [1]
    return client


def test_pii_nested_under_status_never_reaches_tier_2_or_3(gateway: GatewayProcess) -> None:
    tier3, tier2 = _partner(gateway, 3), _partner(gateway, 2, V311)
    time.sleep(0.6)  # the gateway notices subscribed tiers on its event tick (0.25 s)
    unit = gateway.enroll_unit(f"TRK-{uuid.uuid4().hex[:6].upper()}")
    truck = Paho(gateway.mqtt_port, unit, version=V5)
    assert truck.connect()[0] == 0
    payload = json.dumps(REVIEW_PAYLOAD).replace("{unit}", unit.ident)
    assert truck.publish(f"fleet/{unit.ident}/telemetry/eta", payload, qos=1) == 0
    (three,) = tier3.expect(1)
    (two,) = tier2.expect(1)
    assert three.topic.startswith("views/3/fleet/u-") and three.topic.endswith("/eta")
    assert json.loads(three.payload) == {
        "ts": 1765000000,
        "status": {"state": "loading"},
        "eta": "2026-12-07T10:00Z",
    }
    assert json.loads(two.payload) == {
        "ts": 1765000000,
        "lat": 52.1,
        "lon": 4.6,
        "status": {"state": "loading"},
        "eta": "2026-12-07T10:00Z",
    }
    for got in (three, two):
        text = got.topic + got.payload.decode()
        for leak in ("driver", "Jan", "+31", unit.ident, "Depot", "52.123456"):
            assert leak not in text, (leak, text)
    for client in (tier3, tier2, truck):
        client.disconnect()


def test_a_chatty_unit_does_not_starve_tier_3(gateway: GatewayProcess) -> None:
    """Tier 3 allows 1 view message a second (burst 5) for the whole tier; a unit may take a tenth."""
    tier3 = _partner(gateway, 3)
    time.sleep(0.6)
    chatty_creds = gateway.enroll_unit(f"TRK-CHATTY-{uuid.uuid4().hex[:4].upper()}")
    quiet_creds = gateway.enroll_unit(f"TRK-QUIET-{uuid.uuid4().hex[:4].upper()}")
    chatty = Paho(gateway.mqtt_port, chatty_creds, version=V5)
    quiet = Paho(gateway.mqtt_port, quiet_creds, version=V5)
    assert chatty.connect()[0] == 0 and quiet.connect()[0] == 0
    stop = threading.Event()

    def flood() -> None:  # 15 messages a second: within a unit's own publish rate (20/s)
        n = 0
        while not stop.is_set():
            chatty.client.publish(
                f"fleet/{chatty_creds.ident}/telemetry/eta", json.dumps({"eta": f"c{n}"}), qos=0
            )
            n += 1
            time.sleep(1 / 15)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    time.sleep(1.0)  # the chatty unit has had every chance to drain the tier
    for n in range(3):
        quiet.publish(f"fleet/{quiet_creds.ident}/telemetry/eta", json.dumps({"eta": f"q{n}"}), qos=1)
        time.sleep(0.5)
    stop.set()
    flooder.join(5)
    got = tier3.quiet(1.0)
    etas = [json.loads(m.payload)["eta"] for m in got]
    print(f"\ntier 3 received {etas}")
    assert any(e.startswith("q") for e in etas)  # the quiet unit got through
    assert sum(e.startswith("c") for e in etas) <= 2  # the chatty one took no more than its share
    for client in (tier3, chatty, quiet):
        client.disconnect()
