"""PROXY protocol v2 in front of a listener: only configured balancers may say whom they forward.

`behind_balancers` wraps a listener's `Serve` (what the accept loop calls with each admitted socket).
A socket from one of `listen.proxy_protocol_from`'s addresses must open with a PROXY v2 header
(gateway/edge/proxy_protocol.py), read here with exact-length reads so that not one byte of what
follows (the TLS ClientHello) is taken from the socket; then the socket goes on to the wrapped
`Serve` as if the client named in the header had connected: its address is the one the handshake's
audit, the certificate check, the Peer (and so the detectors, the sessions and the audit records) and
the logs see, and the per-source limits are charged to it, not to the balancer (`Slot` moved).

A balancer's socket without a valid header within PROXY_HEADER_TIMEOUT is closed: counted by reason
and logged once per kind and interval by the hub (`proxy_refused`), never traced back. A LOCAL header
is the balancer speaking for itself (HAProxy's health checks on a `send-proxy-v2` server), and a
socket closed before its first byte is a plain TCP check (other balancers'): both counted as health
checks and closed, nothing audited or logged, since a check has no certificate to show.

A socket from anyone else is served as before: a PROXY header it sends is the first bytes of its TLS
handshake, which fails (`not_tls`), so no client can claim another address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway.edge.accept import Serve, format_address
from gateway.edge.admission import ExemptSources, Slot, source_host
from gateway.edge.proxy_protocol import ProxyHeader, ProxyHeaderError, ProxyHeaderReader

log = logging.getLogger("fleetgate.server")

# Seconds a balancer has to send its header. HAProxy writes it at once, with the connection: waiting
# longer only holds a socket for something that is not coming.
PROXY_HEADER_TIMEOUT = 5.0
TIMEOUT = "timeout"
CLOSED = "closed"  # the balancer closed (or reset) the connection before the header was complete
EMPTY = "empty"  # ... before sending a byte: a plain TCP health check (a connect, then a close)


class ProxyObserver(Protocol):
    """What the wrapper reports to and asks of (the connection hub satisfies it)."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def proxy_refused(self, listener: str, address: str, reason: str, detail: str) -> None: ...

    def proxy_health_check(self, listener: str, address: str) -> None: ...

    def readmit(self, listener: str, slot: Slot, address: str) -> bool: ...


class Balancers:
    """The addresses and networks trusted to send PROXY headers (membership cached per host)."""

    def __init__(self, entries: str) -> None:
        self.entries = frozenset(entries.split())
        self._sources = ExemptSources(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __contains__(self, address: str) -> bool:
        """Whether `address` (as `format_address` gives it) is a balancer's."""
        return source_host(address) in self._sources


def behind_balancers(
    serve: Serve,
    balancers: Balancers,
    hub: ProxyObserver,
    listener: str,
    timeout: float = PROXY_HEADER_TIMEOUT,
) -> Serve:
    """`serve`, with the PROXY v2 header of the sockets `balancers` opened read and honoured first."""
    if not balancers:
        return serve

    def serve_proxied(sock: socket.socket, address: str, slot: Slot) -> None:
        if address not in balancers:
            serve(sock, address, slot)
            return
        hub.spawn(_after_header(sock, address, slot, serve, hub, listener, timeout))

    return serve_proxied


async def _after_header(
    sock: socket.socket,
    address: str,
    slot: Slot,
    serve: Serve,
    hub: ProxyObserver,
    listener: str,
    timeout: float,
) -> None:
    try:
        header = await read_proxy_header(sock, timeout)
    except ProxyHeaderError as exc:
        _drop(sock, slot)
        if exc.reason == EMPTY:
            hub.proxy_health_check(listener, address)
        else:
            hub.proxy_refused(listener, address, exc.reason, str(exc))
        return
    except BaseException:  # cancelled at shutdown
        _drop(sock, slot)
        raise
    if header.command == "local":
        _drop(sock, slot)
        hub.proxy_health_check(listener, address)
        return
    named = header.source_ip
    client = format_address(named) if named is not None else address
    if client != address and not hub.readmit(listener, slot, client):
        _drop(sock, slot)  # the client's own source is over its limits (the hub logged why)
        return
    serve(sock, client, slot)


def _drop(sock: socket.socket, slot: Slot) -> None:
    slot.release()
    sock.close()


async def read_proxy_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """Read one PROXY v2 header from the non-blocking `sock`, and nothing after it. Raises
    ProxyHeaderError (reason `timeout` or `closed` too)."""
    loop = asyncio.get_running_loop()
    reader = ProxyHeaderReader()
    received = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await loop.sock_recv(sock, reader.wanted())
                if not data:
                    break
                received += len(data)
                header = reader.feed(data)
                if header is not None:
                    return header
    except TimeoutError:
        raise ProxyHeaderError(TIMEOUT, f"no complete PROXY header within {timeout:g} s") from None
    except OSError:  # reset by the peer (TimeoutError, an OSError too, is caught above)
        pass
    if not received:
        raise ProxyHeaderError(EMPTY, "the connection closed without a byte (a TCP health check)")
    raise ProxyHeaderError(CLOSED, "the connection closed before its PROXY header was whole")
