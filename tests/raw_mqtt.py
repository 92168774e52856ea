"""A bare MQTT client over mTLS, built on the project's codec: it sends exactly the packets a test
gives it and nothing else (paho acknowledges, resends and reconnects on its own, which hides what a
test must control: a PUBREC not sent, a PUBCOMP held back, a packet no library would send)."""

from __future__ import annotations

import socket
import ssl
import time

from gateway.mqtt.codec import PacketReader, encode
from gateway.mqtt.packets import Connack, Connect, Packet, ProtocolVersion
from tests.harness import Credentials, GatewayProcess


class RawMqtt:
    def __init__(
        self,
        gw: GatewayProcess,
        creds: Credentials,
        version: ProtocolVersion = ProtocolVersion.MQTT_5,
        connect: Connect | None = None,
    ) -> None:
        self.version = version
        raw = socket.create_connection(("127.0.0.1", gw.mqtt_port))
        self.tls: ssl.SSLSocket = gw.client_context(creds).wrap_socket(raw, server_hostname="localhost")
        self.reader = PacketReader(version=version)
        self.send(connect if connect is not None else Connect(creds.ident, version, keep_alive=0))
        connack = self.next(10)
        assert isinstance(connack, Connack) and connack.reason_code == 0, connack
        self.connack: Connack = connack

    def send(self, packet: Packet) -> None:
        self.tls.sendall(encode(packet, self.version))

    def next(self, timeout: float) -> Packet | None:
        """The next packet from the gateway, or None if the connection closed (or went quiet)."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self.reader.next_packet()
            if packet is not None:
                return packet
            self.tls.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.tls.recv(65536)
            except (TimeoutError, ssl.SSLError, OSError):
                return None
            if not data:
                return None
            self.reader.feed(data)

    def until(self, kind: type, timeout: float) -> list[Packet]:
        """Every packet received until one of `kind` (the last in the list) or the timeout."""
        got: list[Packet] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            packet = self.next(left)
            if packet is None:
                break
            got.append(packet)
            if isinstance(packet, kind):
                break
        return got

    def close(self) -> None:
        self.tls.close()
