"""The retained mode command is the gateway's alone: no client publishes, replaces or clears it.

The real policy engine and the shipped policy, back to back with the broker. The gateway publishes
through `publish_internal` (as ops/mode_publisher.py does); every client attempt — the dispatch
service, whose grants cover fleet/+/cmd/#, a unit on its own command topic, a lab client, a will —
is refused, and the unit keeps hearing exactly what the gateway said.
"""

from __future__ import annotations

import pytest

from gateway.broker import PublishDenied
from gateway.broker.events import WillDropped
from gateway.mqtt.packets import Publish, Will
from gateway.mqtt.reason_codes import ReasonCode
from gateway.ops.quarantine import mode_topic
from gateway.policy.access import MODE_COMMAND_FILTER, is_mode_command
from gateway.policy.directory import InMemoryDirectory
from gateway.policy.engine import PolicyEngine
from gateway.stores.policy_file import load_policy
from pki.names import Identity
from tests.broker.lab import TRUST_DOMAIN, V5, VERSIONS, Lab, lab_peer, service_peer, unit_peer

MODE = "fleet/TRK-1/cmd/mode"
GENUINE = b'{"mode": "diagnostic-only", "by": "operator/alice"}'
FORGED = b'{"mode": "normal", "by": "operator/alice"}'


@pytest.fixture
def lab() -> Lab:
    directory = InMemoryDirectory()
    for kind, ident in (("unit", "TRK-1"), ("unit", "TRK-2"), ("service", "dispatch")):
        directory.enroll(Identity(kind, ident, TRUST_DOMAIN))
    lab = Lab(PolicyEngine(load_policy(None), directory))
    lab.apply(lab.broker.publish_internal(Publish(MODE, GENUINE, qos=1, retain=True), lab.now))
    return lab


def retained_mode(lab: Lab) -> list[bytes]:
    """What a unit subscribing now is told (a fresh session: retained messages only)."""
    fresh = lab.connect("TRK-1")
    fresh.subscribe("fleet/TRK-1/cmd/#", qos=1)
    payloads = fresh.payloads
    fresh.disconnect_cleanly()
    return payloads


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["dispatch", "unit", "lab"])
@pytest.mark.parametrize("payload", [FORGED, b""], ids=["forge", "clear"])
def test_no_client_replaces_or_clears_the_mode_command(
    lab: Lab, version: object, who: str, payload: bytes
) -> None:
    peer = {"dispatch": service_peer("dispatch"), "unit": unit_peer("TRK-1"), "lab": lab_peer()}[who]
    client_id = {"dispatch": "dispatch", "unit": "TRK-1", "lab": "lab-1"}[who]
    unit = lab.connect("TRK-2")  # a bystander unit, so the TRK-1 fresh session below is not taken
    unit.subscribe("fleet/TRK-2/cmd/#", qos=1)
    forger = lab.connect(client_id, version=version, peer=peer)  # type: ignore[arg-type]
    forger.publish(MODE, payload, qos=1, retain=True)
    if version == V5:
        assert forger.done[-1].reason_code == ReasonCode.NOT_AUTHORIZED
    (denied,) = [e for e in lab.broker.drain_events() if isinstance(e, PublishDenied)]
    assert (denied.reason, denied.rule) == ("reserved_for_gateway", "builtin/gateway_mode_command")
    forger.disconnect_cleanly()
    assert retained_mode(lab) == [GENUINE]


def test_dispatch_keeps_its_other_command_topics(lab: Lab) -> None:
    unit = lab.connect("TRK-1")
    unit.subscribe("fleet/TRK-1/cmd/#", qos=1)
    dispatch = lab.connect("dispatch", peer=service_peer("dispatch"))
    dispatch.publish("fleet/TRK-1/cmd/reroute", b"depot-7", qos=1)
    assert unit.payloads == [GENUINE, b"depot-7"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_will_on_the_mode_command_is_dropped_when_it_fires(lab: Lab, version: object) -> None:
    # dispatch is granted fleet/+/cmd/#: only the built-in rule stands between its will and the command.
    # CONNECT does not judge wills (a will the policy forbids is no reason to refuse a connection); the
    # will is judged when it fires, and this one is dropped there.
    will = Will(MODE, FORGED, qos=1, retain=True)
    link = lab.connect("dispatch", version=version, will=will, peer=service_peer("dispatch"))  # type: ignore[arg-type]
    assert link.connack.reason_code == 0
    lab.broker.drain_events()
    link.lose()
    dropped = [e for e in lab.broker.drain_events() if isinstance(e, WillDropped)]
    assert [(e.topic, e.reason) for e in dropped] == [(MODE, "reserved_for_gateway")]
    assert retained_mode(lab) == [GENUINE]


def test_the_gateway_publishes_exactly_the_reserved_topic() -> None:
    assert MODE_COMMAND_FILTER == "fleet/+/cmd/mode"
    assert is_mode_command(mode_topic("TRK-00042"))
    assert not any(
        is_mode_command(t) for t in ("fleet/TRK-1/cmd/mode/ack", "x/TRK-1/cmd/mode", "fleet/cmd/mode")
    )
