"""PostgreSQL stopped under traffic, then started again (docs/cluster.md, "PostgreSQL unreachable").

While it is away: the live session keeps publishing and every acknowledged QoS 1 message reaches its
subscriber; a unit this node already knows reconnects (admitted from the node's cache); a unit the
node never saw is refused before any MQTT byte; an operation from the CLI is refused with one
sentence and changes nothing. When it is back: the node follows the registry again by itself (a CLI
quarantine reaches the live session), and the audit chain verifies.

`OUTAGE_S` (default 4) is how long the database stays stopped; docs/cluster.md's table was made
with OUTAGE_S=30.
"""

from __future__ import annotations

import os
import queue
import ssl
import time

import pytest

from gateway.cli.device import device_csr
from pki.est_client import EstClientError, bootstrap, simpleenroll
from pki.keys import generate_private_key
from tests.clients import Paho
from tests.harness import GatewayProcess
from tests.pg import PgCluster, skip_without_postgres

OUTAGE_S = float(os.environ.get("OUTAGE_S", "4"))
CACHE_S = 3  # cluster.cache_max_age for this node: known units are admitted for this long, then none


def test_a_database_outage_under_traffic(tmp_path_factory: pytest.TempPathFactory) -> None:
    skip_without_postgres()
    root = tmp_path_factory.mktemp("outage")
    pg = PgCluster(root / "pg")
    pg.start()
    gw = GatewayProcess(
        root / "node",
        env={"FLEETGATE_DATABASE_URL": pg.url(), "FLEETGATE_CLUSTER_CACHE_MAX_AGE": str(CACHE_S)},
    )
    try:
        gw.init()
        gw.start()
        known, other = gw.enroll_unit("TRK-LIVE"), gw.enroll_unit("TRK-OTHER")
        late_token = gw.add_unit("TRK-LATE")  # registered now, enrolling during the outage
        analytics = Paho(gw.mqtt_port, gw.issue("service", "analytics"))
        assert analytics.connect()[0] == 0
        assert analytics.subscribe("fleet/+/telemetry/#", 1) == [1]
        unit = Paho(gw.mqtt_port, known)
        assert unit.connect()[0] == 0
        assert unit.subscribe("fleet/TRK-LIVE/cmd/#", 1) == [1]

        pg.stop()
        # at once: a unit the node knows reconnects from its cache (younger than CACHE_S)
        unit.disconnect()
        unit = Paho(gw.mqtt_port, known)
        assert unit.connect()[0] == 0
        acked = 0
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            assert unit.publish("fleet/TRK-LIVE/telemetry/gps", f"fix-{acked}") == 0
            acked += 1
            time.sleep(0.05)
        # past the bound, nothing new is admitted, known or not; the live session above still flows
        with pytest.raises((ssl.SSLError, OSError, queue.Empty)):
            code, _ = Paho(gw.mqtt_port, other).connect(timeout=3)
            assert code != 0  # never reached: the socket is closed before any MQTT byte
        assert unit.publish("fleet/TRK-LIVE/telemetry/gps", f"fix-{acked}") == 0
        acked += 1
        with pytest.raises(EstClientError) as est:
            key = generate_private_key()
            simpleenroll(bootstrap(gw.https_url, ca_file=gw.root_ca), "TRK-LATE", late_token,
                         device_csr(key, "TRK-LATE"))
        assert est.value.status == 503 and "nothing was changed" in str(est.value)
        refused = gw.cli("unit", "quarantine", "TRK-LIVE", "--reason", "during the outage")
        assert refused.code != 0
        assert "PostgreSQL at 127.0.0.1" in refused.stderr and "unreachable" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr

        pg.start()
        got = analytics.expect(acked, timeout=10)  # nothing acknowledged was lost
        assert [m.payload for m in got] == [f"fix-{i}".encode() for i in range(acked)]
        assert unit.subscribe("fleet/TRK-LIVE/cmd/#", 1) == [1]
        done = gw.cli("unit", "quarantine", "TRK-LIVE", "--reason", "after the outage")
        assert done.code == 0, done.stderr
        mode = next(m for m in iter(lambda: unit.messages.get(timeout=10), None) if m.topic.endswith("/mode")
                    and b"diagnostic-only" in m.payload)
        assert mode.topic == "fleet/TRK-LIVE/cmd/mode"
        assert unit.publish("fleet/TRK-LIVE/telemetry/gps", b"late") in (0, 0x87)  # quarantined now
        verify = gw.cli("audit", "verify")
        assert verify.code == 0, verify.stdout + verify.stderr
        late = simpleenroll(bootstrap(gw.https_url, ca_file=gw.root_ca), "TRK-LATE", late_token,
                            device_csr(generate_private_key(), "TRK-LATE"))  # the token was not burnt
        assert late.serial_number > 0
        print(f"outage {OUTAGE_S:.0f}s: {acked} QoS 1 messages acknowledged and delivered; "
              f"EST refused with: {est.value}; CLI refused with: {refused.stderr.strip()}")
    finally:
        gw.stop()
        pg.stop()
