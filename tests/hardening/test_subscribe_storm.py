"""One huge SUBSCRIBE must not stall the gateway: its work is bounded by the identity's subscription cap.

The review's reproduction: any certificate holder sends one ~250 KB SUBSCRIBE of 26,000 filters it is
not granted. Before the fix the gateway decided every filter (and produced an audit event for each)
before answering, freezing the event loop for seconds. Now at most `max_subscriptions` filters of a
packet are judged, and judging stops when the connection reaches its violation limit: the attacker
is disconnected (5.0: DISCONNECT 0x87) without a 26,000-code SUBACK.

A bystander unit pings every 50 ms meanwhile; its ping latency is measured and REPORTED (printed and
recorded as a figure), never asserted: this machine is shared and wall-clock bounds would be flaky.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import (
    Disconnect,
    Pingreq,
    Pingresp,
    ProtocolVersion,
    Suback,
    Subscribe,
    Subscription,
)
from tests.hardening.common import record_figure
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import metrics_text
from tests.raw_mqtt import RawMqtt

V5 = ProtocolVersion.MQTT_5
V311 = ProtocolVersion.MQTT_3_1_1
FILTERS = 26_000
VIOLATION_LIMIT = 20  # violations.max_denied_before_disconnect in the default policy


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("storm"))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


class Pinger:
    """A bystander unit sending PINGREQ every 50 ms and timing each PINGRESP, in a thread."""

    def __init__(self, gw: GatewayProcess, creds: Credentials) -> None:
        self.client = RawMqtt(gw, creds, V5)
        self.latencies: list[float] = []
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.client.send(Pingreq())
            answer = self.client.next(10)
            if not isinstance(answer, Pingresp):
                self.lost = True
                return
            self.latencies.append(time.monotonic() - started)
            time.sleep(0.05)

    def __enter__(self) -> Pinger:
        self._thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)
        self.client.close()


def _subscribe_decisions(gw: GatewayProcess) -> float:
    """Every subscribe decision the policy engine made so far, allowed or denied, whatever the reason."""
    pattern = r'^fleetgate_decisions_total\{kind="subscribe",[^}]*\} ([0-9.e+]+)$'
    found = re.findall(pattern, metrics_text(gw), re.M)
    return sum(float(value) for value in found)


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_a_26000_filter_subscribe_is_judged_up_to_the_cap_and_costs_a_bystander_little(
    gw: GatewayProcess, version: ProtocolVersion
) -> None:
    tag = "5" if version == V5 else "3"
    attacker_creds = gw.issue("operator", f"bob{tag}", "--role", "auditor")
    bystander = gw.enroll_unit(f"TRK-BYSTANDER-{tag}")
    packet = Subscribe(7, tuple(Subscription(f"x/{i}") for i in range(FILTERS)))
    wire = encode(packet, version)
    denials_before = _subscribe_decisions(gw)
    attacker = RawMqtt(gw, attacker_creds, version)
    with Pinger(gw, bystander) as pinger:
        baseline = list(pinger.latencies)
        sent_at = time.monotonic()
        attacker.tls.sendall(wire)
        first = attacker.next(30)
        answered_after = time.monotonic() - sent_at
        rest = attacker.next(5) if isinstance(first, Suback) else None
        time.sleep(0.5)
        during = pinger.latencies[len(baseline) :]
    attacker.close()
    judged = _subscribe_decisions(gw) - denials_before
    record_figure(
        "subscribe_storm",
        protocol=str(version.name),
        filters=FILTERS,
        packet_bytes=len(wire),
        attacker_answered_after_ms=round(answered_after * 1000, 1),
        filters_judged=judged,
        bystander_pings=len(during),
        bystander_ping_median_ms=round(statistics.median(during) * 1000, 2) if during else None,
        bystander_ping_max_ms=round(max(during) * 1000, 2) if during else None,
    )
    print(
        f"\n[{version.name}] {FILTERS} filters ({len(wire)} bytes): attacker answered after "
        f"{answered_after * 1000:.0f} ms, {judged:.0f} filters judged; bystander pings during the attack: "
        f"{len(during)}, median {statistics.median(during) * 1000:.1f} ms, max {max(during) * 1000:.1f} ms"
    )
    assert not pinger.lost  # the bystander kept its connection and got every PINGRESP
    assert judged <= VIOLATION_LIMIT  # judging stopped at the connection's violation limit
    # No SUBACK of 26,000 codes: the attacker is cut off (5.0 with DISCONNECT 0x87 "too many denied").
    assert not isinstance(first, Suback) and rest is None
    if version == V5:
        assert isinstance(first, Disconnect) and first.reason_code == 0x87
    else:
        assert first is None


def test_an_oversized_subscribe_of_granted_filters_is_granted_up_to_the_cap(gw: GatewayProcess) -> None:
    """Filters past the identity's cap are answered 0x97 without being judged; the SUBACK has one code
    for each filter, as §3.8.4 requires."""
    unit = gw.enroll_unit("TRK-MANY-FILTERS")
    client = RawMqtt(gw, unit, V5)
    decisions_before = _subscribe_decisions(gw)
    filters = tuple(Subscription(f"fleet/TRK-MANY-FILTERS/cmd/f{i}") for i in range(5000))
    client.send(Subscribe(9, filters))
    suback = client.next(30)
    client.close()
    assert isinstance(suback, Suback) and len(suback.reason_codes) == 5000
    assert suback.reason_codes[:20] == (0,) * 20  # the unit role's max_subscriptions
    assert set(suback.reason_codes[20:]) == {0x97}
    assert _subscribe_decisions(gw) - decisions_before <= 20  # only the filters within the cap were judged
