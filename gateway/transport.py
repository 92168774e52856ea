"""The asyncio adapter: socket bytes → broker → actions → socket bytes. Small and boring on purpose.

Each accepted TCP connection starts as a _TlsUpgrade protocol that pauses reading and runs the TLS
handshake itself with loop.start_tls, bounded by the handshake timeout. Doing the handshake here
rather than through create_server(ssl=...) is what lets us see, count and audit every failed
handshake with its reason (asyncio swallows those at debug level otherwise).

After the handshake, MqttConnection owns the socket: it reads the verified client certificate once,
turns it into a Peer (or refuses the connection before a single MQTT byte is read), and from then
on every data_received goes to Broker.receive and the returned actions are applied through the hub.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from cryptography import x509

from gateway.policy.access import Peer

if TYPE_CHECKING:
    from gateway.server import ConnectionHub

# Decides what a verified client certificate proves: a Peer, or a refusal reason (e.g. "revoked").
PeerCheck = Callable[[x509.Certificate, str], "Peer | str"]


def format_address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


class MqttConnection(asyncio.Protocol):
    """One client connection after TLS (or on the loopback lab listener)."""

    def __init__(self, hub: ConnectionHub) -> None:
        self._hub = hub
        self._conn: int | None = None
        self._transport: asyncio.Transport | None = None
        self._early: list[bytes] = []  # bytes that arrived before start() (TLS 1.3 early data races)
        self._closed = False

    def start(self, transport: asyncio.Transport, peer: Peer) -> None:
        self._transport = transport
        self._conn = self._hub.register(self, transport, peer)
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Only the plaintext lab listener arrives here; TLS connections are started by _TlsUpgrade.
        # (uvloop's transports implement asyncio.Transport without subclassing it, hence the cast.)
        stream = cast(asyncio.Transport, transport)
        peer = Peer(address=format_address(stream.get_extra_info("peername")), identity=None)
        self.start(stream, peer)

    def data_received(self, data: bytes) -> None:
        if self._conn is None:
            self._early.append(data)
            return
        self._hub.received(self._conn, data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            self._hub.lost(self._conn)


class _TlsUpgrade(asyncio.Protocol):
    """A fresh TCP connection on the mTLS listener, until its handshake is done."""

    def __init__(self, hub: ConnectionHub, context: ssl.SSLContext, peer_check: PeerCheck) -> None:
        self._hub = hub
        self._context = context
        self._peer_check = peer_check

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.pause_reading()  # nothing is read until start_tls takes the socket over
        address = format_address(transport.get_extra_info("peername"))
        if not self._hub.admit_tcp(address):
            transport.abort()
            return
        self._hub.spawn(self._handshake(transport, address))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass

    async def _handshake(self, raw: asyncio.Transport, address: str) -> None:
        loop = asyncio.get_running_loop()
        connection = MqttConnection(self._hub)
        started = time.monotonic()
        try:
            tls = await loop.start_tls(
                raw,
                connection,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._hub.handshake_timeout,
            )
        except (TimeoutError, ssl.SSLError, OSError, ConnectionError) as exc:
            raw.abort()
            self._hub.handshake_failed(address, handshake_failure_reason(exc))
            return
        if tls is None:  # pragma: no cover - peer vanished during the handshake
            raw.abort()
            self._hub.handshake_failed(address, "connection_lost")
            return
        self._hub.handshake_ok(time.monotonic() - started)
        self._admit(tls, connection, address)

    def _admit(self, tls: asyncio.Transport, connection: MqttConnection, address: str) -> None:
        ssl_object = tls.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            tls.abort()
            self._hub.handshake_failed(address, "no_client_certificate")
            return
        verdict = self._peer_check(x509.load_der_x509_certificate(der), address)
        if isinstance(verdict, str):
            tls.abort()
            self._hub.certificate_refused(address, verdict)
            return
        connection.start(tls, verdict)


def handshake_failure_reason(exc: BaseException) -> str:
    """A stable, metric-friendly reason for a failed TLS handshake."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLError):
        text = (exc.reason or str(exc)).upper()
        for needle, reason in _SSL_REASONS:
            if needle in text:
                return reason
        return "tls_error"
    return "connection_lost"


_SSL_REASONS = (
    ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "no_client_certificate"),
    ("CERTIFICATE_REQUIRED", "no_client_certificate"),
    ("CERTIFICATE_VERIFY_FAILED", "certificate_verify_failed"),
    ("UNKNOWN_CA", "unknown_ca"),
    ("CERTIFICATE_EXPIRED", "certificate_expired"),
    ("WRONG_VERSION_NUMBER", "not_tls"),
    ("HTTP_REQUEST", "not_tls"),
    ("UNSUPPORTED_PROTOCOL", "unsupported_tls_version"),
    ("NO_SHARED_CIPHER", "no_shared_cipher"),
)


def tls_server_context(cert_chain: str, key: str, client_ca: str, min_version: str = "1.2") -> ssl.SSLContext:
    """Server context for the MQTT listener: TLS ≥ 1.2 and a client certificate from our CA, always."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_chain, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context
