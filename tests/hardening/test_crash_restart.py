"""kill -9 under load: nothing the gateway acknowledged is lost, and its state survives.

Publishers (enrolled units, MQTT 5.0, QoS 1 and 2) send to a persistent-session subscriber that is
offline; every PUBACK/PUBCOMP they receive is recorded. The gateway is SIGKILLed mid-run and
restarted on the same data directory; the subscriber resumes its session and must receive every
acknowledged message (QoS 2 exactly once, QoS 1 at least once). Retained messages, a revocation, a
quarantine, a used enrollment token and the audit chain are checked across the same kill.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.device import device_csr
from pki.est_client import EstClientError, bootstrap, simpleenroll
from pki.keys import generate_private_key
from tests.hardening.common import AckLog, Collector, record_figure, v5_client
from tests.harness import Credentials, GatewayProcess

UNITS = 6
RATE = 45.0  # per unit: within the default unit limit (20/s, burst 100) for the ~2.5 s of a run


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path)
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGKILL)


def publish_until(
    client_log: list[tuple[object, AckLog]], units: list[Credentials], stop: threading.Event
) -> None:
    seq = 0
    while not stop.is_set() and seq < 2000:
        for (client, acks), unit in zip(client_log, units, strict=True):
            qos = 1 + seq % 2
            payload = f"{unit.ident}:{seq}:q{qos}"
            info = client.publish(f"fleet/{unit.ident}/telemetry/engine", payload, qos=qos)  # type: ignore[attr-defined]
            with acks.lock:
                acks.sent[info.mid] = (payload, qos)
        seq += 1
        stop.wait(1.0 / RATE)


def resume(gw: GatewayProcess, creds: Credentials, collector: Collector) -> object:
    client, props = v5_client(creds, clean=False, expiry=3600)
    client.on_message = collector.on_message
    client.connect("localhost", gw.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    return client


@pytest.mark.timeout(300)  # CPU-bound (a loaded gateway, restarted): slow when the suite runs in parallel
@pytest.mark.parametrize("subscriber", ["offline", "online"])
def test_kill_9_under_load_loses_nothing_acknowledged(gw: GatewayProcess, subscriber: str) -> None:
    sub = gw.issue("service", "dispatch")
    units = [gw.enroll_unit(f"TRK-K{i}") for i in range(UNITS)]

    # the persistent-session subscriber registers, then goes offline: everything is queued for it
    collector = Collector()
    first = resume(gw, sub, collector)
    first.subscribe("fleet/+/telemetry/#", qos=2)  # type: ignore[attr-defined]
    first.subscribe("fleet/+/state", qos=1)  # type: ignore[attr-defined]
    time.sleep(0.5)
    if subscriber == "offline":
        first.disconnect()  # type: ignore[attr-defined]
        first.loop_stop()  # type: ignore[attr-defined]

    # state changes that must survive the kill
    state_unit = units[0]
    retained, _ = v5_client(state_unit)
    retained.connect("localhost", gw.mqtt_port)
    retained.loop_start()
    retained.publish(
        f"fleet/{state_unit.ident}/state", b"retained-before-kill", qos=1, retain=True
    ).wait_for_publish(5)
    retained.disconnect()
    retained.loop_stop()
    quarantined = gw.enroll_unit("TRK-Q")
    assert gw.cli("quarantine", "TRK-Q", "--reason", "crash test").code == 0
    revoked = gw.enroll_unit("TRK-REV")
    serial = gw.cli("unit", "show", "TRK-REV", "--json", check=True).json()["serial"]  # type: ignore[index]
    assert gw.cli("cert", "revoke", str(serial), "--force").code == 0
    token = gw.add_unit("TRK-TOK")
    server = bootstrap(gw.https_url, ca_file=gw.root_ca)
    simpleenroll(server, "TRK-TOK", token, device_csr(generate_private_key(), "TRK-TOK"))

    # load: QoS 1 and 2 from every unit, acknowledgements recorded
    clients: list[tuple[object, AckLog]] = []
    for unit in units:
        client, props = v5_client(unit)
        acks = AckLog()
        client.on_publish = acks.on_publish
        client.connect("localhost", gw.mqtt_port, properties=props)
        client.loop_start()
        clients.append((client, acks))
    time.sleep(0.5)
    stop = threading.Event()
    runner = threading.Thread(target=publish_until, args=(clients, units, stop), daemon=True)
    runner.start()
    time.sleep(2.0)
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL  # mid-run, publishers still sending
    stop.set()
    runner.join(5)
    for client, _ in clients:
        client.loop_stop()  # type: ignore[attr-defined]
    first.loop_stop()  # type: ignore[attr-defined]
    before_kill = collector.payloads()
    acknowledged: dict[str, int] = {}
    sent = 0
    for _, acks in clients:
        acknowledged.update(acks.acknowledged())
        sent += len(acks.sent)
    assert len(acknowledged) > 50, "the load did not get going before the kill"

    gw.start()
    collector = Collector()
    if subscriber == "online":
        # The same client, reconnected: a QoS 2 message it had answered with PUBREC before the kill
        # is its own from then on (MQTT 5.0 §4.3.3), and it hands it over when the restarted gateway
        # sends the PUBREL. A new client object would not know the message and would drop it; CI
        # once killed the gateway in that window and counted the two messages as lost.
        first.on_message = collector.on_message  # type: ignore[attr-defined]
        first.reconnect()  # type: ignore[attr-defined]
        first.loop_start()  # type: ignore[attr-defined]
        resumed = first
    else:
        resumed = resume(gw, sub, collector)
    collector.wait_quiet(2.0, 30)
    resumed.disconnect()  # type: ignore[attr-defined]
    resumed.loop_stop()  # type: ignore[attr-defined]
    received = Counter(before_kill + collector.payloads())
    lost = sorted(p for p in acknowledged if p not in received)
    duplicated_qos2 = sorted(p for p, n in received.items() if n > 1 and p.endswith(":q2"))
    record_figure(
        f"kill9_under_load_subscriber_{subscriber}",
        delivered_before_kill=len(before_kill),
        sent=sent,
        acknowledged=len(acknowledged),
        delivered_after_restart=sum(1 for p in acknowledged if p in received),
        lost=len(lost),
        unacknowledged_also_delivered=sum(1 for p in received if p not in acknowledged and ":q" in p),
        qos1_duplicates=sum(n - 1 for p, n in received.items() if n > 1 and p.endswith(":q1")),
        qos2_duplicates=len(duplicated_qos2),
    )
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"
    assert not duplicated_qos2

    # retained message survived
    fresh = Collector()
    check, props = v5_client(sub)
    check.on_message = fresh.on_message
    check.connect("localhost", gw.mqtt_port, properties=props)
    check.loop_start()
    check.subscribe(f"fleet/{state_unit.ident}/state", qos=1)
    fresh.wait_quiet(1.0, 10)
    check.disconnect()
    check.loop_stop()
    assert "retained-before-kill" in fresh.payloads()

    # quarantine, revocation and the used token survived
    shown = gw.cli("unit", "show", quarantined.ident, "--json", check=True).json()
    assert shown["state"] == "quarantined"  # type: ignore[index]
    refused = Collector()
    cut, cut_props = v5_client(revoked)
    cut.on_message = refused.on_message
    with pytest.raises(Exception):  # noqa: B017 - TLS refusal (OSError) or a refused CONNACK
        cut.connect("localhost", gw.mqtt_port, properties=cut_props)
        cut.loop_start()
        cut.subscribe(f"fleet/{revoked.ident}/cmd/#", qos=1)
        time.sleep(1.0)
        assert cut.is_connected()
    cut.loop_stop()
    with pytest.raises(EstClientError):
        simpleenroll(server, "TRK-TOK", token, device_csr(generate_private_key(), "TRK-TOK"))

    verify = gw.cli("audit", "verify", "--json")
    assert verify.code == 0, verify.stdout + verify.stderr
