"""One live session per client id in the cluster, and detector state that follows a unit.

docs/cluster.md, "Sessions, retained messages, shared subscriptions and wills across nodes".

- When this node accepts a CONNECT (the broker's `session_started` hook, inside the broker call) it
  announces it on `<prefix>.ctl.session`: client id, the identity that connected, and when (the
  broker's `now`, epoch seconds). Every other node hands that to `Broker.connected_elsewhere`: a live
  connection there with that client id, of the same identity, is taken over as a local takeover is
  (DISCONNECT 0x8E, the will by §3.1.3.2.2) if the announced connection is the later one: (time,
  node name) compared, so two CONNECTs at once on two nodes leave the later one everywhere; and the
  session there ends (it lives where its client is now).
- The node that took a connection over replies on `<prefix>.ctl.taken` to the announcing node with
  the old connection's peer; that node reports the takeover (`SessionTakenOver`: one `mqtt.takeover`
  audit record and one observation for the cloning detector), as if it had been local. The old node
  reports nothing, so a takeover across nodes is counted once.
- When a unit's connection ends on this node, the last GPS fix the impossible-travel detector holds
  for it goes out on `<prefix>.ctl.fix`; every other node adopts it (ContinuousEvaluator.adopt_fix),
  so a jump across a reconnect to another node still fires.

Everything is signed and fresh-checked (ClusterLink.verified) like a backbone message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from gateway.app.backbone import H_NODE
from gateway.app.cluster_link import ClusterLink
from gateway.broker.events import ClientDisconnected
from gateway.broker.records import identity_from_text, identity_to_text
from gateway.detection.continuous import ContinuousEvaluator
from gateway.edge.driver import BrokerDriver
from gateway.policy.peer import Peer

log = logging.getLogger("fleetgate.cluster")


class ClusterSessions:
    def __init__(
        self, link: ClusterLink, driver: BrokerDriver, evaluator: ContinuousEvaluator, prefix: str
    ) -> None:
        self._link = link
        self._driver = driver
        self._evaluator = evaluator
        self.node = link.node
        self.session_subject = f"{prefix}.ctl.session"
        self.taken_subject = f"{prefix}.ctl.taken"
        self.fix_subject = f"{prefix}.ctl.fix"
        self.taken_here = 0  # connections here ended by a later connect elsewhere (tests, status)

    def attach(self) -> None:
        self._driver.broker.cluster.session_started = self.started
        self._link.want(self.session_subject, self._on_session)
        self._link.want(self.taken_subject, self._on_taken)
        self._link.want(self.fix_subject, self._on_fix)

    def detach(self) -> None:
        self._driver.broker.cluster.session_started = None

    # --- out ----------------------------------------------------------------------------------

    def started(self, client_id: str, peer: Peer, now: float) -> None:
        """The broker's hook: a CONNECT was accepted here at `now`."""
        body = {"client": client_id, "identity": identity_to_text(peer.identity), "at": now}
        self._link.publish(self.session_subject, json.dumps(body).encode(), {})

    def observe_events(self, events: Iterable[object]) -> None:
        """The event tick: a unit that left this node takes its last GPS fix with it."""
        for event in events:
            if not isinstance(event, ClientDisconnected) or event.peer.identity is None:
                continue
            fix = self._evaluator.last_fix(event.peer.identity)
            if fix is not None:
                body = {"identity": identity_to_text(event.peer.identity), "fix": list(fix)}
                self._link.publish(self.fix_subject, json.dumps(body).encode(), {})

    # --- in -----------------------------------------------------------------------------------

    async def _on_session(self, msg: Any) -> None:
        headers = self._link.verified(msg)
        if headers is None or headers.get(H_NODE) == self.node:
            return
        try:
            body = json.loads(msg.data)
            client_id, at, node = str(body["client"]), float(body["at"]), headers[H_NODE]
            identity = identity_from_text(body["identity"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster sessions: a malformed announcement on %s", msg.subject)
            return
        old = self._driver.connected_elsewhere(client_id, identity, (at, node), self.node)
        if old is None:
            return
        self.taken_here += 1
        reply = {
            "client": client_id,
            "to": node,
            "address": old.address,
            "identity": identity_to_text(old.identity),
            "serial": old.certificate_serial,
        }
        self._link.publish(self.taken_subject, json.dumps(reply).encode(), {})

    async def _on_taken(self, msg: Any) -> None:
        headers = self._link.verified(msg)
        if headers is None:
            return
        try:
            body = json.loads(msg.data)
            if body["to"] != self.node:
                return
            serial = body.get("serial")
            old = Peer(
                str(body["address"]),
                identity_from_text(body["identity"]),
                None if serial is None else int(serial),
            )
            client_id = str(body["client"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster sessions: a malformed takeover reply on %s", msg.subject)
            return
        self._driver.taken_over_elsewhere(client_id, old)

    async def _on_fix(self, msg: Any) -> None:
        headers = self._link.verified(msg)
        if headers is None or headers.get(H_NODE) == self.node:
            return
        try:
            body = json.loads(msg.data)
            identity = identity_from_text(body["identity"])
            lat, lon, at = (float(x) for x in body["fix"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster sessions: a malformed GPS fix on %s", msg.subject)
            return
        if identity is not None:
            self._evaluator.adopt_fix(identity, (lat, lon, at), self._driver.clock.now())
