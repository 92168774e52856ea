"""Publishing the retained mode command (`fleet/{unit}/cmd/mode`) that a unit's record calls for.

The payload comes from the record alone (gateway.ops.quarantine.mode_command), so the publisher only has
to remember what it last published per unit and publish when that differs: following the registry
(which reports a changed record many times while its poll window overlaps) then costs nothing, and
a restart that publishes everything again sends the same bytes — signatures included, since the
signer's ECDSA is deterministic (pki/signed_json.py). Only ever `cmd/mode`: the gateway never
publishes on a control topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from gateway.edge.driver import BrokerDriver
from gateway.mqtt.packets import Publish
from gateway.ops.quarantine import mode_command, mode_topic
from gateway.policy.rules import Policy
from pki.records import IdentityRecord
from pki.signed_json import JsonSigner

log = logging.getLogger("fleetgate.ops")


class ModePublisher:
    def __init__(self, driver: BrokerDriver, policy: Callable[[], Policy], signer: JsonSigner) -> None:
        self._driver = driver
        self._policy = policy
        self._signer = signer
        self._published: dict[str, bytes] = {}  # unit id -> the payload last published

    def use_signer(self, signer: JsonSigner) -> None:
        self._signer = signer

    def publish(self, record: IdentityRecord, now: datetime) -> bytes | None:
        """Publish the unit's mode command if it differs from the last one; returns what was published."""
        payload = mode_command(record, self._policy(), self._signer)
        if payload is None or self._published.get(record.id) == payload:
            return None
        self._published[record.id] = payload
        publish = Publish(mode_topic(record.id), payload, qos=1, retain=True)
        self._driver.publish_internal(publish, now.timestamp())
        log.info("mode command for unit %s: %s", record.id, payload.decode())
        return payload
