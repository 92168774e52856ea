"""The asyncio adapter: socket bytes → broker → actions → socket bytes. Small and boring on purpose.

MtlsListener accepts each TCP connection (gateway/edge/accept.py: admission first) and hands it to a
TlsServerProtocol (gateway/edge/tls.py), which runs the TLS handshake (bounded by the handshake
timeout) so that every failed handshake is seen, counted and audited with its reason.

After the handshake, MqttConnection owns the socket: it reads the verified client certificate once,
turns it into a Peer (or refuses the connection before a single MQTT byte is read), and from then
on every data_received goes to Broker.receive and the returned actions are applied through the hub.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Protocol, cast

from cryptography import x509

from gateway.edge.accept import AcceptLoop, Admitter, Serve, format_address
from gateway.edge.admission import Slot
from gateway.edge.proxied import Balancers, ProxyObserver, behind_balancers
from gateway.edge.tls import HandshakeObserver, TlsServerProtocol
from gateway.policy.peer import Peer

# Decides what a verified client certificate proves: a Peer, or a refusal reason (e.g. "revoked").
PeerCheck = Callable[[x509.Certificate, str], "Peer | str"]


class ConnectionSink(HandshakeObserver, Admitter, ProxyObserver, Protocol):
    """What a connection reports to, and asks of (the connection hub satisfies it)."""

    def register(self, transport: asyncio.Transport, peer: Peer) -> int: ...

    def received(self, conn: int, data: bytes) -> None: ...

    def lost(self, conn: int) -> None: ...

    def certificate_refused(self, address: str, reason: str) -> None: ...


class MqttConnection(asyncio.Protocol):
    """One client connection, after its TLS handshake (or on the loopback lab listener)."""

    def __init__(
        self, hub: ConnectionSink, peer_check: PeerCheck | None = None, address: str | None = None
    ) -> None:
        self._hub = hub
        self._peer_check = peer_check  # None on the lab listener: clients there are anonymous
        self._address = address  # the client's, as the listener knows it (a balancer's PROXY header)
        self._conn: int | None = None
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it, hence the cast.
        stream = cast(asyncio.Transport, transport)
        address = self._address or format_address(stream.get_extra_info("peername"))
        peer = self._admit(stream, address)
        if peer is None:
            stream.abort()
            return
        self._conn = self._hub.register(stream, peer)

    def _admit(self, stream: asyncio.Transport, address: str) -> Peer | None:
        if self._peer_check is None:
            return Peer(address=address, identity=None)
        ssl_object = stream.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:  # CERT_REQUIRED makes this unreachable; kept as a second lock on the door
            self._hub.certificate_refused(address, "no_client_certificate")
            return None
        verdict = self._peer_check(x509.load_der_x509_certificate(der), address)
        if isinstance(verdict, str):
            self._hub.certificate_refused(address, verdict)
            return None
        return verdict

    def data_received(self, data: bytes) -> None:
        if self._conn is not None:
            self._hub.received(self._conn, data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._conn is not None:
            self._hub.lost(self._conn)


class MtlsListener:
    """The MQTT listener: our accept loop (gateway/edge/accept.py: admission first) gives each admitted
    connection a TlsServerProtocol (gateway/edge/tls.py), which runs the TLS handshake, bounded, reports
    its outcome to the hub, and gives the connection's Slot back when the socket closes.

    Accepting here rather than in `create_server` keeps admission before any TLS work, and accept
    failures (EMFILE under a flood) counted and survived rather than logged by the loop.
    """

    def __init__(
        self,
        hub: ConnectionSink,
        context: ssl.SSLContext,
        peer_check: PeerCheck,
        balancers: Balancers | None = None,
    ) -> None:
        self._hub = hub
        self._context = context
        self._peer_check = peer_check
        serve: Serve = self._start_handshake
        if balancers:  # listen.proxy_protocol_from: their sockets open with a PROXY v2 header
            serve = behind_balancers(serve, balancers, hub, "mqtt")
        self._accept = AcceptLoop("mqtt", hub, serve)

    def use_context(self, context: ssl.SSLContext) -> None:
        """Serve new handshakes with `context` (live connections keep the one they were made with).

        OpenSSL can add trust anchors to a live context but never remove one, so taking trust away
        (a retired issuing CA) needs a fresh context; each handshake reads this attribute once.
        """
        self._context = context

    async def start(
        self, host: str, port: int, backlog: int = 4096, *, reuse_port: bool = False
    ) -> tuple[str, int]:
        return await self._accept.start(host, port, backlog, reuse_port=reuse_port)

    def _start_handshake(self, sock: socket.socket, address: str, slot: Slot) -> None:
        self._hub.spawn(self._handshake(sock, address, slot))

    async def _handshake(self, sock: socket.socket, address: str, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        hub, context, peer_check = self._hub, self._context, self._peer_check
        try:
            await loop.connect_accepted_socket(
                lambda: TlsServerProtocol(
                    context,
                    hub,
                    address,
                    lambda: MqttConnection(hub, peer_check, address),
                    on_closed=slot.release,
                ),
                sock,
            )
        except OSError:  # the client was gone before the transport existed
            slot.release()
            sock.close()
            hub.handshake_failed(address, "connection_lost")
        except BaseException:
            slot.release()
            sock.close()
            raise

    def close(self) -> None:
        self._accept.close()
