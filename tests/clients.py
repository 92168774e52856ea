"""A thin synchronous wrapper over paho-mqtt 2.x for tests: connect over mTLS, collect messages.

It hides paho's callbacks behind blocking calls with timeouts, so a test reads like what a unit
does: connect (and see the CONNACK reason), subscribe (and see what was granted), publish (and see
the PUBACK reason), and wait for messages.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.harness import Credentials

V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any = None


class Paho:
    def __init__(
        self,
        port: int,
        creds: Credentials | None,
        client_id: str | None = None,
        *,
        version: MQTTProtocolVersion = V5,
        clean: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 30,
        user_properties: tuple[tuple[str, str], ...] = (),
        bind_address: str = "",
    ) -> None:
        self.port = port
        self.bind_address = bind_address  # the local address to connect from ("": the system's choice)
        self.version = version
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.user_properties = user_properties  # 5.0 CONNECT user properties (e.g. device posture)
        ident = client_id if client_id is not None else (creds.ident if creds else "lab-client")
        kwargs: dict[str, Any] = {"client_id": ident, "protocol": version}
        if version != V5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        if creds is not None:
            self.client.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert), keyfile=str(creds.key))
        if will is not None:
            self.client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connack: queue.Queue[tuple[int, bool]] = queue.Queue()
        self.connack_properties: Any = None  # paho's Properties of the last CONNACK (5.0)
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self._published: dict[int, threading.Event] = {}
        self._pub_reasons: dict[int, int] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = self._on_disconnect

    # --- callbacks (paho's network thread) ----------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack_properties = props
        self.connack.put((int(reason.value), bool(flags.session_present)))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = getattr(message, "properties", None)
        self.messages.put(
            Received(message.topic, bytes(message.payload), message.qos, bool(message.retain), props)
        )

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        self.subacks.put([int(r.value) for r in reasons])

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            self._pub_reasons[mid] = int(reason.value)
            event = self._published.setdefault(mid, threading.Event())
        event.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.disconnects.put(int(reason.value))

    # --- blocking API -------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> tuple[int, bool]:
        """(CONNACK reason, session_present); raises on a transport failure (e.g. TLS refused)."""
        properties = None
        if self.version == V5:
            properties = Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                properties.SessionExpiryInterval = self.session_expiry
            if self.user_properties:
                properties.UserProperty = list(self.user_properties)
        kwargs: dict[str, Any] = {"keepalive": self.keepalive, "properties": properties}
        if self.version == V5:
            kwargs["clean_start"] = self.clean
        if self.bind_address:
            kwargs["bind_address"] = self.bind_address
        self.client.connect("localhost", self.port, **kwargs)
        self.client.loop_start()
        return self.connack.get(timeout=timeout)

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 10.0) -> list[int]:
        self.client.subscribe(topic_filter, qos=qos)
        return self.subacks.get(timeout=timeout)

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> int:
        """Publish and wait for the flow to complete; returns the PUBACK/PUBREC reason (0 for QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            info.wait_for_publish(timeout)
            return 0
        with self._lock:
            event = self._published.setdefault(info.mid, threading.Event())
        if not event.wait(timeout):
            raise TimeoutError(f"no acknowledgement for {topic} within {timeout}s")
        return self._pub_reasons.get(info.mid, 0)

    def expect(self, count: int, timeout: float = 10.0) -> list[Received]:
        got = []
        for _ in range(count):
            got.append(self.messages.get(timeout=timeout))
        return got

    def quiet(self, seconds: float = 0.5) -> list[Received]:
        """Whatever arrives within `seconds` (used to show that nothing does)."""
        got = []
        try:
            while True:
                got.append(self.messages.get(timeout=seconds))
        except queue.Empty:
            return got

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def reconnect_to(self, port: int, timeout: float = 10.0) -> tuple[int, bool]:
        """Connect again, to `port` (another node), as the same client: paho keeps its session state
        (the QoS 2 messages it acknowledged with PUBREC and awaits PUBREL for) across it, as MQTT asks
        of a client that resumes its session."""
        self.port = port
        return self.connect(timeout)

    def drop(self) -> None:
        """Vanish without DISCONNECT (the will fires)."""
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client.loop_stop()
