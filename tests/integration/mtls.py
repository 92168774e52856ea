"""One raw MQTT CONNECT over mTLS, and small certificate helpers, for the admission tests.

A client library that reconnects by itself (paho's loop does) would hide a refusal behind its
retry, so `connack` makes exactly one attempt and reports what came back.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

from cryptography import x509

from gateway.mqtt.codec import encode
from gateway.mqtt.packets import Connect, ProtocolVersion
from tests.harness import Credentials, GatewayProcess

V5, V311 = ProtocolVersion.MQTT_5, ProtocolVersion.MQTT_3_1_1


def connack(gw: GatewayProcess, creds: Credentials, version: ProtocolVersion = V5) -> int | None:
    """The CONNACK reason of one CONNECT over mTLS, or None when the gateway closed the connection
    without one (refused right after the TLS handshake)."""
    connect = Connect(client_id=creds.ident, protocol_version=version)
    with socket.create_connection(("127.0.0.1", gw.mqtt_port), timeout=5) as sock:
        try:
            with gw.client_context(creds).wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(encode(connect, version))
                answer = tls.recv(1024)
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError):
            return None
    if not answer:
        return None
    assert answer[0] == 0x20, answer  # CONNACK
    return answer[3]


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=30)


def certificate(creds: Credentials) -> x509.Certificate:
    return x509.load_pem_x509_certificate(creds.cert.read_bytes())  # the leaf: first in the file


def serial_of(creds: Credentials) -> str:
    return format(certificate(creds).serial_number, "x")
