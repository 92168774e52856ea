"""Our own accept loop, used by every listener (MQTT, HTTPS, lab), so admission comes before any work.

`loop.create_server` accepts and immediately builds a protocol (and for TLS an SSL object and a
handshake): nothing can be refused before that, and an accept that fails (EMFILE) is only logged by the
event loop. Here each listener accepts its sockets itself (up to ACCEPT_BATCH per wakeup), asks its
gate (gateway/edge/admission.py) for a Slot, closes refused sockets at once, and hands admitted ones
on with their Slot, which is released when the connection ends, however it ends. An accept failure is
reported and survived: the loop backs off briefly and goes on serving.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from gateway.edge.admission import Slot

ACCEPT_BATCH = 64  # connections taken from the listen backlog per wakeup of the accept loop
ACCEPT_FAILURE_PAUSE = 0.1  # seconds the loop waits after a failed accept (e.g. out of descriptors)

Serve = Callable[[socket.socket, str, Slot], None]


class NotLoopback(RuntimeError):
    """The lab listener's address resolved to something other than loopback; it is not served.
    (Here, not in hub.py: a class compiled by mypyc cannot derive from a built-in exception.)"""


class Admitter(Protocol):
    """What a listener asks (the connection hub satisfies it)."""

    def admit(self, listener: str, address: str) -> Slot | None: ...

    def accept_failed(self, listener: str, exc: OSError) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...


def format_address(sockname: object) -> str:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host, port = sockname[0], sockname[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(sockname)


class AcceptLoop:
    def __init__(self, name: str, hub: Admitter, serve: Serve) -> None:
        self.name = name
        self._hub = hub
        self._serve = serve
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, host: str, port: int, backlog: int = 4096, *, reuse_port: bool = False
    ) -> tuple[str, int]:
        """`reuse_port`: SO_REUSEPORT, so the worker processes of `fleetgate serve --workers N` listen on
        one port and the kernel spreads new connections over them."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=reuse_port)
        self._sock.setblocking(False)
        self._task = asyncio.get_running_loop().create_task(self._accept_loop(self._sock))
        bound = self._sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        hub, name, serve = self._hub, self.name, self._serve
        while True:
            failure: OSError | None = None
            accepted: list[tuple[socket.socket, Any]] = []
            try:
                accepted.append(await loop.sock_accept(listening))
                # A connect storm queues many at once: take the backlog (bounded) in this wakeup
                # instead of one connection per trip through the event loop.
                while len(accepted) < ACCEPT_BATCH:
                    accepted.append(listening.accept())
            except BlockingIOError:
                pass
            except OSError as exc:  # e.g. EMFILE: back off, keep serving
                failure = exc
            for sock, peer in accepted:
                address = format_address(peer)
                slot = hub.admit(name, address)
                if slot is None:
                    sock.close()
                    continue
                sock.setblocking(False)
                serve(sock, address, slot)
            if failure is not None:
                hub.accept_failed(name, failure)
                await asyncio.sleep(ACCEPT_FAILURE_PAUSE)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()


class Released(asyncio.Protocol):
    """Wraps an application protocol so that its connection's Slot is released when it ends."""

    def __init__(self, inner: asyncio.Protocol, slot: Slot) -> None:
        self._inner = inner
        self._slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._slot.release()
        self._inner.connection_lost(exc)


def stream_server(
    hub: Admitter,
    factory: Callable[[], asyncio.Protocol],
    *,
    context: ssl.SSLContext | None = None,
    handshake_timeout: float | None = None,
) -> Serve:
    """How a listener whose protocol runs on the event loop's own transports (and TLS) serves an
    admitted socket: the HTTPS listener (aiohttp) and the lab listener."""

    def serve(sock: socket.socket, address: str, slot: Slot) -> None:
        hub.spawn(_connect(sock, slot, factory, context, handshake_timeout))

    return serve


async def _connect(
    sock: socket.socket,
    slot: Slot,
    factory: Callable[[], asyncio.Protocol],
    context: ssl.SSLContext | None,
    handshake_timeout: float | None,
) -> None:
    loop = asyncio.get_running_loop()
    try:
        if context is None:
            await loop.connect_accepted_socket(lambda: Released(factory(), slot), sock)
        else:
            await loop.connect_accepted_socket(
                lambda: Released(factory(), slot), sock, ssl=context, ssl_handshake_timeout=handshake_timeout
            )
    except OSError:  # ssl.SSLError, TimeoutError and ConnectionError are OSErrors too
        # The handshake failed or timed out, or the client left first: the application protocol never
        # saw the connection, so its connection_lost will not release the slot.
        slot.release()
        sock.close()
    except BaseException:  # cancelled at shutdown: give the slot back all the same
        slot.release()
        sock.close()
        raise
