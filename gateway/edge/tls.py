"""TLS for the MQTT listener, on memory BIOs over a plain event-loop TCP transport.

Why not the event loop's own TLS (`connect_accepted_socket(ssl=...)`): it holds ~9 KB more per idle
connection (uvloop keeps a 256 KiB read buffer per TLS connection, of which the touched pages stay
resident, plus its own transport objects), and a failed handshake reaches us only as an exception
raised into the task that awaited it. Here one protocol object per connection drives OpenSSL through
`ssl.SSLObject` (the same library calls uvloop makes), reports the handshake's outcome to the hub
itself, and hands the application protocol a transport that encrypts on `write`.

States: HANDSHAKE (bounded by the hub's handshake timeout) → OPEN → CLOSED. Application bytes that
arrive in the same TCP read as the client's last handshake message are delivered, not lost.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

# Decrypted bytes asked for per SSLObject.read call: one record's worth. A TLS record carries at most
# 16 KiB of plaintext (RFC 8446 5.1, RFC 5246 6.2.1) and OpenSSL returns one record per read, so
# the loop below takes a read's records one call each and never leaves part of one inside OpenSSL.
# Asking for more buys nothing and costs a lot: CPython allocates the whole size on every call, and
# above glibc's mmap threshold (128 KiB) that is an mmap, a mremap and a munmap per read (256 KiB:
# ~55 µs per record on this machine, against ~2 µs at 16 KiB; docs/benchmarks.md, issue 18).
_READ_SIZE = 16 * 1024
# After our close_notify and FIN, how long a peer may take to close its side before the socket is
# reset. Closing at once while the peer's bytes sit unread would reset the connection, and a client
# could lose the DISCONNECT (with its reason code) we wrote just before.
CLOSE_LINGER_SECONDS = 2.0


class HandshakeObserver(Protocol):
    """What the TLS layer reports to (the connection hub satisfies it)."""

    handshake_timeout: float

    def handshake_ok(self, seconds: float) -> None: ...

    def handshake_failed(self, address: str, reason: str) -> None: ...


__all__ = ["TlsServerProtocol", "TlsTransport", "handshake_failure_reason"]


def openssl_of(sslobj: ssl.SSLObject) -> Any:
    """The `_ssl` object inside an `ssl.SSLObject`: the wrapper's `read` and `write` only pass their
    arguments on to it (CPython's ssl.py, read in 3.11), and the same exceptions come from it, so
    calling it directly saves an interpreted call per record each way. The wrapper itself on an
    interpreter that keeps no such attribute."""
    return getattr(sslobj, "_sslobj", sslobj)


class TlsTransport:
    """What the application protocol writes to: plaintext in, TLS records out to the TCP transport.

    The subset of asyncio.Transport the gateway uses (write, close, abort, is_closing,
    get_write_buffer_size, get_extra_info, pause_reading, resume_reading)."""

    __slots__ = ("_address", "_closing", "_encrypt", "_outgoing", "_sslobj", "_tcp")

    def __init__(
        self, tcp: asyncio.Transport, sslobj: ssl.SSLObject, outgoing: ssl.MemoryBIO, address: str = ""
    ) -> None:
        self._tcp = tcp
        self._sslobj = sslobj
        self._encrypt: Callable[[bytes], int] = openssl_of(sslobj).write
        self._outgoing = outgoing
        self._closing = False
        self._address = address  # the client's (behind a balancer: what its PROXY header named)

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        try:
            self._encrypt(data)
        except ssl.SSLError:  # the session is broken (e.g. a fatal alert was received): drop it
            self.abort()
            return
        self._tcp.write(self._outgoing.read())

    def close(self) -> None:
        """Send close_notify after what was written and half-close; what the peer still sends is
        read and dropped until it closes too (at most CLOSE_LINGER_SECONDS, then a reset)."""
        if self._closing:
            return
        self._closing = True
        try:
            self._sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # the peer's close_notify is not awaited
        tcp = self._tcp
        pending = self._outgoing.read()
        if pending:
            tcp.write(pending)
        if not tcp.can_write_eof():
            tcp.close()
            return
        tcp.write_eof()
        asyncio.get_running_loop().call_later(CLOSE_LINGER_SECONDS, _reset_if_open, tcp)

    def abort(self) -> None:
        self._closing = True
        self._tcp.abort()

    def is_closing(self) -> bool:
        return self._closing or self._tcp.is_closing()

    def pause_reading(self) -> None:
        """Stop reading the socket. Records already read were decrypted and handed on in the same
        data_received (nothing waits in the TLS layer), so this takes effect at once."""
        self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp.is_reading()

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() + self._outgoing.pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._sslobj
        if name == "cipher":
            return self._sslobj.cipher()
        if name == "peercert":
            return self._sslobj.getpeercert()
        if name == "client_address":
            return self._address or default
        return self._tcp.get_extra_info(name, default)


def _reset_if_open(tcp: asyncio.Transport) -> None:
    if not tcp.is_closing():
        tcp.abort()


class TlsServerProtocol(asyncio.Protocol):
    """The TCP-level protocol of one connection: runs the handshake, then relays to `app`."""

    def __init__(
        self,
        context: ssl.SSLContext,
        hub: HandshakeObserver,
        address: str,
        app_factory: Callable[[], asyncio.Protocol],
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self._on_closed = on_closed  # the connection's admission slot is given back here
        self._context = context
        self._hub = hub
        self._address = address
        self._app_factory: Callable[[], asyncio.Protocol] | None = app_factory  # used once, then let go
        self._app: asyncio.Protocol | None = None
        self._app_transport: TlsTransport | None = None
        self._tcp: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._sslobj = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._decrypt: Callable[[int], bytes] = openssl_of(self._sslobj).read
        self._timeout: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._done = False  # the handshake's outcome has been reported

    # --- handshake ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it
        self._started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(self._hub.handshake_timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._fail("handshake_timeout")

    def _handshake(self) -> bool:
        """Advance the handshake with what arrived; True once it is complete."""
        try:
            self._sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            self._flush()  # the alert that tells the client why
            self._fail(handshake_failure_reason(exc))
            return False
        self._flush()  # the server's last flight
        self._done = True
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self._hub.handshake_ok(time.monotonic() - self._started)
        assert self._tcp is not None and self._app_factory is not None
        factory, self._app_factory = self._app_factory, None  # one object fewer per connection to walk
        self._app = factory()
        self._app_transport = TlsTransport(self._tcp, self._sslobj, self._outgoing, self._address)
        self._app.connection_made(self._app_transport)  # type: ignore[arg-type]
        return True

    def _fail(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        self._hub.handshake_failed(self._address, reason)
        if self._tcp is not None:
            self._tcp.close()

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and self._tcp is not None and not self._tcp.is_closing():
            self._tcp.write(data)

    # --- data -----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        app_transport = self._app_transport
        if app_transport is not None and (app_transport._closing or app_transport._tcp.is_closing()):
            return  # we closed (TlsTransport.is_closing, inlined): the peer's last bytes are dropped
        self._incoming.write(data)
        if self._app is None and (self._done or not self._handshake()):
            return  # still shaking hands, or it failed
        chunks: list[bytes] = []
        closed_by_peer = False
        read = self._decrypt
        incoming = self._incoming
        try:
            while True:
                chunk = read(_READ_SIZE)
                if not chunk:
                    closed_by_peer = True
                    break
                chunks.append(chunk)
                if not incoming.pending:
                    # Every record that arrived was read whole (OpenSSL reads no further ahead than
                    # the record it decrypts): no need for the read that would raise SSLWantReadError.
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            closed_by_peer = True
        except ssl.SSLError:
            closed_by_peer = True  # a bad record or a fatal alert: the session is over
            if self._tcp is not None:
                self._tcp.abort()
        if self._outgoing.pending:
            self._flush()  # post-handshake messages (key updates)
        app = self._app
        assert app is not None
        if chunks:
            app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if closed_by_peer and self._tcp is not None and not self._tcp.is_closing():
            self._tcp.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._on_closed is not None:
            on_closed, self._on_closed = self._on_closed, None
            on_closed()
        if not self._done:
            self._fail("connection_lost")
        if self._app is not None:
            app, self._app = self._app, None
            app.connection_lost(exc)


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


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (the ssl module has no name for it): the chain and signatures are
# still verified; the validity window is checked by the gateway itself, widened by
# `tls.clock_skew_tolerance` (Gateway.check_certificate, the admin API, EST re-enrollment).
X509_V_FLAG_NO_CHECK_TIME = 0x200000


def tls_server_context(
    cert_chain: str, key: str, trust_anchors: str, min_version: str = "1.2"
) -> ssl.SSLContext:
    """Server context for the MQTT listener: TLS ≥ 1.2 and a client certificate from our CA, always.

    `trust_anchors` is PEM text: every trusted issuing CA, without the root, which signed retired
    issuing CAs too (more can be added to a live context with `load_verify_locations(cadata=...)`;
    none can be taken away, see MtlsListener.use_context). Validity dates are not checked here but
    by the caller's peer check, with the configured clock-skew tolerance; everything else about the
    chain is OpenSSL's to refuse.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_chain, key)
    context.load_verify_locations(cadata=trust_anchors)
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # No session resumption: every connection presents its certificate and has it verified in full.
    # Issuing the two TLS 1.3 tickets OpenSSL sends by default (each a serialised session with the
    # client's certificate) was ~30 % of the gateway's CPU per handshake, for clients that never
    # resume (paho, most device stacks).
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    # The issuing CAs are the trust anchors: the chain ends there, and the issuing CA's own
    # signature by the root (the same for every unit) is not verified again on every handshake.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
