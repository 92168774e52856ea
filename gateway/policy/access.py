"""The seam between the broker and the policy engine.

The broker asks; the policy answers with a Decision. It never decides access itself. Two things meet
here: the Peer a connection presents (who, proved by what: policy/peer.py), and the AccessPolicy
protocol the broker calls for every connect, subscribe, publish and delivery.
"""

from __future__ import annotations

from typing import Protocol

from gateway.mqtt.errors import TopicFilterInvalid
from gateway.mqtt.packets import Connect
from gateway.mqtt.topics import filter_covers, topic_matches
from gateway.policy.decision import Decision, allow, deny
from gateway.policy.peer import Peer
from pki.names import CLIENT_KINDS, Identity


class AccessPolicy(Protocol):
    def decide_connect(self, peer: Peer, connect: Connect, now: float) -> Decision: ...

    def decide_subscribe(self, peer: Peer, topic_filter: str, now: float) -> Decision: ...

    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision: ...

    def decide_will(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        """May this peer's will be published now, as it fires? Asked then and only then (never at
        CONNECT: the answer may change while the session lives), and it spends no rate budget."""
        ...

    def decide_delivery(self, peer: Peer, topic: str, now: float) -> Decision:
        """May this peer receive a message on this topic now (retained, queued, will, live)?"""
        ...


# The lab role: anonymous clients of the plaintext lab listener (loopback only, a throwaway data dir;
# see gateway/app/runtime.py). Their client ids start with LAB_PREFIX, so they can never take over
# (or resume) the session of a certificate identity, and they never touch the vehicle-control and
# command namespaces: no publish there, no subscription inside them, no delivery from them (a `#`
# subscription is granted but filtered, retained messages included).
LAB_PREFIX = "lab-"
LAB_FORBIDDEN = ("fleet/+/control/#", "fleet/+/cmd/#")
# Topics only the gateway publishes, whatever a grant says: the retained mode command through which it
# tells a unit it is quarantined (or released) and what it may still send. A client that could publish
# it could tell a quarantined unit it was released, or clear the command with an empty retained
# message. Denied in decide_publish like `$`-topics (and so in wills); subscribing stays by grant.
MODE_COMMAND_FILTER = "fleet/+/cmd/mode"
_MODE_SUFFIX = "/cmd/mode"
RESERVED_FOR_GATEWAY = deny("reserved_for_gateway", "builtin/gateway_mode_command")


def is_mode_command(topic: str) -> bool:
    """Is `topic` some unit's `fleet/{unit}/cmd/mode`? (A suffix test first: this is the hot path.)"""
    if not topic.endswith(_MODE_SUFFIX) or not topic.startswith("fleet/"):
        return False
    return topic.count("/") == 3  # fleet / {unit} / cmd / mode: ids cannot hold "/"


class CertificateOnlyPolicy:
    """The built-in floor that no configuration can lower.

    Certificate clients: the client id must equal the certificate's id. Lab clients (plaintext,
    loopback only): the lab role above, nothing in the gateway's own `$` space, and no publish to the
    mode command. Everything above this floor (grants, quarantine, rates) is the policy engine's.
    """

    def decide_connect(self, peer: Peer, connect: Connect, now: float) -> Decision:
        if peer.identity is None:
            # An empty id is left to the broker (it refuses it unless it assigns ids itself).
            if connect.client_id and not connect.client_id.startswith(LAB_PREFIX):
                return deny("client_id_not_lab", "builtin/lab_role")
            return allow("lab_client", "builtin/lab_role")
        if connect.client_id != peer.identity.id:
            return deny("client_id_mismatch", "builtin/client_id_binding")
        return allow("certificate_identity", "builtin/client_id_binding")

    def decide_subscribe(self, peer: Peer, topic_filter: str, now: float) -> Decision:
        floor = _outside_dollar_space(topic_filter)
        if floor.allowed and peer.identity is None:
            plain = _unshared(topic_filter)
            try:
                if any(filter_covers(forbidden, plain) for forbidden in LAB_FORBIDDEN):
                    return deny("lab_forbidden_topic", "builtin/lab_role")
            except TopicFilterInvalid:
                return deny("invalid_filter", "builtin/topic_filter")
        return floor

    def decide_publish(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        if is_mode_command(topic):
            return RESERVED_FOR_GATEWAY
        return _lab_topic(topic) if peer.identity is None else _outside_dollar_space(topic)

    def decide_will(
        self, peer: Peer, topic: str, payload_size: int, qos: int, retain: bool, now: float
    ) -> Decision:
        # A will is a publish the client set up in advance: the same permission, judged by whatever
        # decide_publish says (so a subclass that narrows publishing narrows wills too).
        return self.decide_publish(peer, topic, payload_size, qos, retain, now)

    def decide_delivery(self, peer: Peer, topic: str, now: float) -> Decision:
        return _lab_topic(topic) if peer.identity is None else _outside_dollar_space(topic)


def _lab_topic(topic: str) -> Decision:
    if any(topic_matches(forbidden, topic) for forbidden in LAB_FORBIDDEN):
        return deny("lab_forbidden_topic", "builtin/lab_role")
    return _outside_dollar_space(topic)


def _unshared(topic: str) -> str:
    return topic.split("/", 2)[2] if topic.startswith("$share/") and topic.count("/") >= 2 else topic


def decide_session_owner(owner: Identity | None, peer: Peer) -> Decision:
    """May `peer` take over, resume or replace the session its client id names, owned by `owner`?

    A session belongs to the identity that created it, and only that identity ever takes it over:
    a CONNECT from anyone else naming it is refused (0x85 / 3.1.1 0x02) and the owner's live
    connection, subscriptions and queued messages stay as they are. Two kinds sharing an id (a
    registry from before ids were unique across kinds) and lab clients (any client id, no
    certificate) are who would try. The one exception runs the other way: a session no certificate
    identity owns — a lab client's (`owner` None), or a stored one whose owner did not parse — gives
    way to the certificate holder whose id it names, or a loopback test tool (or a damaged row)
    could keep a unit off its own client id.
    """
    if owner == peer.identity:
        return allow("session_owner", _OWNER_RULE)
    if peer.identity is not None and (owner is None or owner.kind not in CLIENT_KINDS):
        return allow("ownerless_session_replaced", _OWNER_RULE)
    return deny("client_id_in_use", _OWNER_RULE)


_OWNER_RULE = "builtin/session_owner"


def identity_scope(peer: Peer) -> str:
    """The share scope of a peer's own `$share` groups: its identity, or "lab" for lab clients."""
    return "lab" if peer.identity is None else f"identity/{peer.identity}"


def _outside_dollar_space(topic: str) -> Decision:
    if _unshared(topic).startswith("$"):
        return deny("reserved_topic", "builtin/dollar_topics")
    return allow("builtin_floor", "builtin/floor")
