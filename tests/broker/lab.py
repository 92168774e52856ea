"""A broker and any number of sans-IO clients wired back to back: no sockets, time by hand.

`Lab.connect()` opens a connection, sends CONNECT and pumps bytes until both sides are quiet. Every
action the broker returns is applied here the way the transport would: Send bytes go to that client's
core, Close marks the link closed (with its reason) and nothing more reaches it, PauseReading keeps
what the client sends in its own buffer (as a socket the gateway stops reading would) until
ResumeReading.
"""

from __future__ import annotations

from typing import Any

from gateway.broker import Action, Broker, BrokerLimits, BrokerStore, Close, PauseReading, ResumeReading, Send
from gateway.mqtt.client import ClientEvent, MqttClient, PublishDone
from gateway.mqtt.errors import MqttError
from gateway.mqtt.packets import Connack, Disconnect, ProtocolVersion, Publish, Suback, Unsuback
from gateway.policy.access import AccessPolicy, CertificateOnlyPolicy
from gateway.policy.peer import Peer
from pki.names import Identity

T0 = 1_700_000_000.0
TRUST_DOMAIN = "fleet.local"
V5 = ProtocolVersion.MQTT_5
V311 = ProtocolVersion.MQTT_3_1_1
VERSIONS = (V311, V5)


def unit_peer(unit_id: str, *, serial: int = 1, address: str = "10.0.0.7:40000") -> Peer:
    return Peer(address, Identity("unit", unit_id, TRUST_DOMAIN), certificate_serial=serial)


def service_peer(service_id: str, *, serial: int = 100) -> Peer:
    return Peer("10.0.1.1:50000", Identity("service", service_id, TRUST_DOMAIN), certificate_serial=serial)


def lab_peer(address: str = "127.0.0.1:1883") -> Peer:
    return Peer(address, None)


class Link:
    """One client connection as seen from the test."""

    def __init__(self, lab: Lab, conn: int, client: MqttClient, peer: Peer) -> None:
        self.lab = lab
        self.conn = conn
        self.client = client
        self.peer = peer
        self.events: list[ClientEvent] = []
        self.received = bytearray()  # every byte the broker sent, for wire-level assertions
        self.closed: str | None = None
        self.paused = False  # the broker asked the edge to stop reading this connection
        self.client_error: MqttError | None = None

    def feed(self, data: bytes) -> None:
        self.received += data
        if self.client_error is not None:
            return
        try:
            self.events.extend(self.client.receive_data(data))
        except MqttError as exc:
            self.client_error = exc

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    @property
    def messages(self) -> list[Publish]:
        return self.of(Publish)

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    @property
    def connack(self) -> Connack:
        (connack,) = self.of(Connack)
        assert isinstance(connack, Connack)
        return connack

    @property
    def disconnect(self) -> Disconnect | None:
        found = self.of(Disconnect)
        return found[-1] if found else None

    @property
    def done(self) -> list[PublishDone]:
        return self.of(PublishDone)

    @property
    def subacks(self) -> list[Suback]:
        return self.of(Suback)

    @property
    def unsubacks(self) -> list[Unsuback]:
        return self.of(Unsuback)

    def clear(self) -> None:
        self.events.clear()
        self.received.clear()

    # conveniences that send and pump
    def publish(
        self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, **kw: Any
    ) -> int | None:
        packet_id = self.client.publish(topic, payload, qos, retain, **kw)
        self.lab.pump()
        return packet_id

    def subscribe(self, *subs: Any, **kw: Any) -> Suback:
        self.client.subscribe(*subs, **kw)
        self.lab.pump()
        return self.subacks[-1]

    def unsubscribe(self, *filters: str, **kw: Any) -> Unsuback:
        self.client.unsubscribe(*filters, **kw)
        self.lab.pump()
        return self.unsubacks[-1]

    def flush_once(self) -> None:
        """Send what the client has queued and apply the broker's answer, without pumping the client's
        replies (they stay in its buffer; `drop_output` loses them, like a connection that died)."""
        data = self.client.data_to_send()
        if data:
            self.lab.apply(self.lab.broker.receive(self.conn, data, self.lab.now))

    def drop_output(self) -> None:
        self.client.data_to_send()

    def send_raw(self, data: bytes) -> None:
        self.client.send_raw(data)
        self.lab.pump()

    def disconnect_cleanly(self, reason_code: int = 0, **kw: Any) -> None:
        self.client.disconnect(reason_code, **kw)
        self.lab.pump()

    def lose(self) -> None:
        """The network drops the connection (no DISCONNECT)."""
        self.lab.apply(self.lab.broker.connection_lost(self.conn, self.lab.now))
        self.closed = self.closed or "lost"


class Lab:
    def __init__(
        self,
        policy: AccessPolicy | None = None,
        limits: BrokerLimits | None = None,
        store: BrokerStore | None = None,
        *,
        now: float = T0,
        allow_server_assigned_ids: bool = False,
    ) -> None:
        self.broker = Broker(
            policy or CertificateOnlyPolicy(),
            limits or BrokerLimits(),
            store,
            allow_server_assigned_ids=allow_server_assigned_ids,
        )
        self.now = now
        self.links: dict[int, Link] = {}
        self.actions: list[Action] = []  # everything the broker ever returned

    def open(self, client: MqttClient, peer: Peer) -> Link:
        conn = self.broker.open(peer, self.now)
        link = self.links[conn] = Link(self, conn, client, peer)
        return link

    def connect(
        self, client_id: str, *, version: ProtocolVersion = V5, peer: Peer | None = None, **kw: Any
    ) -> Link:
        client = MqttClient(client_id, version=version, **kw)
        link = self.open(client, peer if peer is not None else unit_peer(client_id))
        client.connect()
        self.pump()
        return link

    def apply(self, actions: list[Action]) -> None:
        self.actions.extend(actions)
        for action in actions:
            link = self.links.get(action.conn)
            assert link is not None, f"action for unknown connection {action}"
            assert link.closed is None or link.closed == "lost", f"{action} after Close({link.closed})"
            if isinstance(action, Send):
                link.feed(action.data)
            elif isinstance(action, Close):
                link.closed = action.reason
            elif isinstance(action, PauseReading):
                link.paused = True
            elif isinstance(action, ResumeReading):
                link.paused = False

    def pump(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            busy = False
            for link in list(self.links.values()):
                if link.paused:
                    continue  # its bytes wait on its side, like unread bytes in a socket
                data = link.client.data_to_send()
                if data and link.closed is None:
                    busy = True
                    self.apply(self.broker.receive(link.conn, data, self.now))
            if not busy:
                return
        raise AssertionError("the conversation did not settle")

    def pump_batched(self, rounds: int = 50) -> None:
        """`pump`, the way the edge drives the broker: every link's pending bytes of a round go in
        one `Broker.receive_batch` call, in link order."""
        for _ in range(rounds):
            reads = []
            for link in list(self.links.values()):
                if link.paused or link.closed is not None:
                    continue
                data = link.client.data_to_send()
                if data:
                    reads.append((link.conn, data))
            if not reads:
                return
            self.apply(self.broker.receive_batch(reads, self.now))
        raise AssertionError("the conversation did not settle")

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.broker.tick(self.now))
        self.pump()


class RecordingTransport:
    """The part of an asyncio transport the hub uses, keeping every write (hub tests without sockets)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0
