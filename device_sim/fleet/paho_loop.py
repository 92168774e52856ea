"""paho-mqtt clients driven by one asyncio event loop, so hundreds of units need no thread each.

paho's documented external-loop API does the work: it tells us when its socket opens, closes and
wants writing (`on_socket_*`), and we call `loop_read`, `loop_write` and `loop_misc` when the event
loop says so. Only `connect()` blocks (TCP + TLS handshake), so it runs in a small thread pool; the
callbacks paho makes from that thread are handed to the loop with `call_soon_threadsafe`.

What a caller sees is what a unit's firmware would log: the CONNACK reason, each PUBACK/SUBACK
reason, the DISCONNECT reason, and the socket error when the gateway closed the connection (a TLS
alert, a reset) — captured from paho's error log, since that is the only place paho reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger("fleet_sim")

V311 = MQTTProtocolVersion.MQTTv311
V5 = MQTTProtocolVersion.MQTTv5
VERSIONS = {"3.1.1": V311, "5.0": V5}

# paho reports a 3.1.1 CONNACK return code as the equivalent 5.0 reason; map it back to the wire value.
V311_RETURN_CODES = {
    0x84: (1, "unacceptable protocol version"),
    0x85: (2, "identifier rejected"),
    0x88: (3, "server unavailable"),
    0x86: (4, "bad user name or password"),
    0x87: (5, "not authorized"),
}

MessageHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained
AckHandler = Callable[[int, int], None]  # mid, reason code


@dataclass(frozen=True)
class ConnectOutcome:
    accepted: bool
    code: int | None  # CONNACK reason (3.1.1 return code or 5.0 reason code); None if none came
    detail: str  # what happened, in words
    elapsed_ms: float


def tls_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    return context


def version_name(version: MQTTProtocolVersion) -> str:
    return "5.0" if version == V5 else "3.1.1"


class AsyncPaho:
    """One paho client whose I/O runs on the current asyncio loop."""

    def __init__(
        self,
        client_id: str,
        context: ssl.SSLContext,
        *,
        version: MQTTProtocolVersion = V5,
        will: tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 60,
        executor: Executor | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.client_id = client_id
        self.user_properties = user_properties  # 5.0 CONNECT user properties (the unit's posture)
        self.version = version
        self.keepalive = keepalive
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        kwargs: dict[str, Any] = {"client_id": client_id, "protocol": version}
        if version != V5:
            kwargs["clean_session"] = True
        client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.tls_set_context(context)
        client.max_inflight_messages_set(100)  # the gateway's receive maximum
        client.suppress_exceptions = True
        if will is not None:
            client.will_set(will[0], will[1], qos=will[2], retain=will[3])
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_log = self._on_log
        self.client = client
        self.on_message: MessageHandler | None = None
        self.on_puback: AckHandler | None = None
        self.on_close: Callable[[], None] | None = None
        self.connected = False
        self.last_error = ""  # the socket error paho logged last (TLS alert, reset, ...)
        self.disconnect_code: int | None = None  # reason of the server's DISCONNECT, if it sent one
        self.closed_by_us = False  # disconnect() or abort() was called: a close is not the gateway's doing
        self.closed = asyncio.Event()
        self._connack: asyncio.Future[tuple[int, str]] | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._misc: asyncio.Task[None] | None = None
        self._fd: int | None = None

    # --- thread handoff ----------------------------------------------------------------------

    def _soon(self, fn: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    # --- socket callbacks (paho tells us what to watch) --------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def watch() -> None:
            self._fd = fd
            self._loop.add_reader(fd, self._readable)

        self._soon(watch)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def unwatch() -> None:
            if fd >= 0:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            self._fd = None

        self._soon(unwatch)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def watch() -> None:
            if self._fd == fd:  # the socket may already be gone when this runs
                self._loop.add_writer(fd, self._writable)

        self._soon(watch)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        fd = sock.fileno()

        def unwatch() -> None:
            if fd >= 0:
                self._loop.remove_writer(fd)

        self._soon(unwatch)

    def _readable(self) -> None:
        # An SSL socket can hold decrypted bytes the selector cannot see; keep reading until it is dry.
        for _ in range(1000):
            self.client.loop_read()
            sock = self.client.socket()
            if sock is None or not hasattr(sock, "pending") or sock.pending() == 0:
                return

    def _writable(self) -> None:
        self.client.loop_write()

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level != mqtt.MQTT_LOG_ERR:
            return
        if text.startswith("Caught exception"):
            log.error("%s: %s", self.client_id, text)  # a bug in our callbacks: never silent
        else:
            self.last_error = text.replace("failed to receive on socket: ", "")

    # --- protocol callbacks ------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        code, text = int(reason.value), str(reason)
        if self.version == V311 and code in V311_RETURN_CODES:
            code, text = V311_RETURN_CODES[code]  # paho maps 3.1.1 return codes onto 5.0 reasons
        if self._connack is not None and not self._connack.done():
            self._connack.set_result((code, text))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if getattr(flags, "is_disconnect_packet_from_server", False):
            self.disconnect_code = int(reason.value)
        self._soon(self._lost)

    def _lost(self) -> None:
        self.connected = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        if self._connack is not None and not self._connack.done():
            failure = ConnectionError(self.last_error or "connection closed before CONNACK")
            self._connack.set_exception(failure)
        for future in self._subacks.values():
            if not future.done():
                future.set_exception(ConnectionError("connection closed before SUBACK"))
        self._subacks.clear()
        if not self.closed.is_set():
            self.closed.set()
            if self.on_close is not None:
                self.on_close()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.on_message is not None:
            self.on_message(message.topic, bytes(message.payload), bool(message.retain))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if self.on_puback is not None:
            self.on_puback(mid, int(reason.value))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result([int(r.value) for r in reasons])

    # --- the API a unit uses -----------------------------------------------------------------

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> ConnectOutcome:
        """Open TCP + TLS and send CONNECT; returns once the CONNACK (or a failure) is in."""
        started = time.monotonic()
        self.closed.clear()
        self.closed_by_us = False
        self.last_error, self.disconnect_code = "", None
        connack: asyncio.Future[tuple[int, str]] = self._loop.create_future()
        self._connack = connack
        self.client.connect_timeout = timeout
        properties = Properties(PacketTypes.CONNECT) if self.version == V5 else None  # type: ignore[no-untyped-call]
        if properties is not None and self.user_properties:
            properties.UserProperty = list(self.user_properties)
        try:
            await self._loop.run_in_executor(
                self._executor,
                lambda: self.client.connect(host, port, self.keepalive, properties=properties),
            )
            code, text = await asyncio.wait_for(connack, timeout)
        except TimeoutError:  # before OSError: TimeoutError is one
            return self._failed(ConnectOutcome(False, None, f"timed out after {timeout:g} s", _ms(started)))
        except (OSError, ConnectionError) as exc:
            return self._failed(ConnectOutcome(False, None, _describe(exc), _ms(started)))
        finally:
            self._connack = None
        if code != 0:
            return self._failed(ConnectOutcome(False, code, f"CONNACK 0x{code:02X} {text}", _ms(started)))
        self.connected = True
        self._misc = self._loop.create_task(self._tick())
        return ConnectOutcome(True, 0, "accepted", _ms(started))

    def server_certificate(self) -> x509.Certificate | None:
        """The gateway's certificate from this connection's TLS handshake (verified by TLS), if any."""
        sock = self.client.socket()
        der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        return x509.load_der_x509_certificate(der) if der else None

    def _failed(self, outcome: ConnectOutcome) -> ConnectOutcome:
        self._close()
        return outcome

    async def _tick(self) -> None:
        # Keep-alive pings and QoS retries: paho's loop_misc, once a second, while connected.
        with contextlib.suppress(asyncio.CancelledError):
            while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
                await asyncio.sleep(1.0)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Queue a PUBLISH; returns its message id, or None if the client is not connected."""
        if not self.connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return int(info.mid)

    async def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK; returns one reason code per filter."""
        result, mid = self.client.subscribe(filters)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError("not connected")
        future: asyncio.Future[list[int]] = self._loop.create_future()
        self._subacks[mid] = future
        return await asyncio.wait_for(future, timeout)

    async def disconnect(self, timeout: float = 2.0) -> None:
        """A polite DISCONNECT (the will is discarded)."""
        self.closed_by_us = True
        if self.connected:
            self.client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), timeout)
        self._close()

    def abort(self) -> None:
        """Vanish without DISCONNECT, as when a truck drives out of coverage (the will fires)."""
        self.closed_by_us = True
        self._close()

    def _close(self) -> None:
        # paho has no public "drop this socket" call; _sock_close unregisters it from our loop (via
        # on_socket_close) before closing it, so the selector never watches a dead descriptor.
        self.client._sock_close()
        self._lost()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS refused: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "TCP connection refused"
    return str(exc) or type(exc).__name__


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000.0
