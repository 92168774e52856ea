"""The PROXY protocol, version 2 (HAProxy's binary header), parsed: pure, no sockets, no clock.

A load balancer in TCP mode that terminates nothing opens each connection to a node with this header,
before the client's first byte (here, before the TLS ClientHello), to say whom it is forwarding:

    12-byte signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
    1 byte             version (high nibble, must be 2) and command (low nibble: 0 LOCAL, 1 PROXY)
    1 byte             address family (high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX) and transport
                       (low nibble: 0 UNSPEC, 1 STREAM, 2 DGRAM)
    2 bytes            length of what follows (network order): the addresses, then TLVs
    addresses          INET 4+4+2+2, INET6 16+16+2+2, UNIX 108+108 (source first, then destination)
    TLVs               type (1 byte), length (2 bytes), value: parsed past, their types kept

`ProxyHeaderReader` is fed the bytes as they arrive (a header may come split over any number of TCP
reads) and says how many more it needs, never more than the header's own end: a caller reading
exactly that many never consumes a byte of what follows. What it was fed beyond the header is kept,
intact, in `rest`. Anything that is not a well-formed version 2 header raises `ProxyHeaderError`,
whose `reason` is a short word for metrics and logs; the text header of version 1 ("PROXY TCP4 …")
is refused on purpose (one format, binary, with a length to bound it).

Who may send a header at all is the listener's business (gateway/edge/proxied.py): parsing one proves
nothing about its sender.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_BODY",
    "SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "encode_header",
    "parse_header",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX = 16  # signature, version and command, family and transport, length
# The most we accept after the prefix (addresses and TLVs). The protocol allows 65,535; a balancer in
# front of an MQTT listener sends 12 or 36 bytes of addresses and perhaps a unique id or an authority
# name. A bound keeps a stranger posing as a balancer from making us hold 64 KiB per connection.
MAX_BODY = 2048
_V1_PREFIX = b"PROXY "

COMMANDS = {0x0: "local", 0x1: "proxy"}
FAMILIES = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
TRANSPORTS = {0x0: "unspec", 0x1: "stream", 0x2: "dgram"}
_ADDRESS_BYTES = {"unspec": 0, "inet": 12, "inet6": 36, "unix": 216}

# Reasons (metric labels): what was wrong with what a balancer sent.
MISSING = "missing"  # no version 2 signature (e.g. a TLS ClientHello straight away)
VERSION_1 = "version_1"  # the text header of version 1
MALFORMED = "malformed"  # a version, command, family or transport out of range, or lengths that do not add up
TOO_LONG = "too_long"  # a length above MAX_BODY


class ProxyHeaderError(ValueError):
    """Not a well-formed PROXY v2 header; `reason` is one of the words above."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    command: str  # "local" (the balancer speaking for itself, e.g. a health check) or "proxy"
    family: str  # "unspec", "inet", "inet6", "unix"
    transport: str  # "unspec", "stream", "dgram"
    # (host, port) for inet/inet6; a path for unix (None if empty); None for unspec and for local.
    source: tuple[str, int] | str | None = None
    destination: tuple[str, int] | str | None = None
    tlv_types: tuple[int, ...] = ()
    length: int = PREFIX  # bytes the whole header took

    @property
    def source_ip(self) -> tuple[str, int] | None:
        """The client's (host, port) when the header names an IP source, otherwise None (a local
        command, an unspecified or a Unix-socket source: the connection's own address stands)."""
        if self.command == "proxy" and isinstance(self.source, tuple):
            return self.source
        return None


def _check_prefix(data: bytes) -> None:
    """Raise as soon as the first bytes cannot start a version 2 header."""
    seen = data[: len(SIGNATURE)]
    if SIGNATURE.startswith(seen):
        return
    if _V1_PREFIX.startswith(data[: len(_V1_PREFIX)]):
        raise ProxyHeaderError(VERSION_1, "a PROXY protocol version 1 (text) header; only version 2 is taken")
    raise ProxyHeaderError(MISSING, "no PROXY protocol version 2 header")


def _header_length(prefix: bytes) -> int:
    """The whole header's length, from its 16-byte prefix (checked)."""
    _check_prefix(prefix)
    version_command, family_transport = prefix[12], prefix[13]
    body: int = struct.unpack_from("!H", prefix, 14)[0]
    if version_command >> 4 != 2:
        raise ProxyHeaderError(MALFORMED, f"PROXY protocol version {version_command >> 4}, not 2")
    if version_command & 0xF not in COMMANDS:
        raise ProxyHeaderError(MALFORMED, f"unknown PROXY command {version_command & 0xF}")
    if family_transport >> 4 not in FAMILIES or family_transport & 0xF not in TRANSPORTS:
        raise ProxyHeaderError(MALFORMED, f"unknown PROXY family or transport 0x{family_transport:02x}")
    if body > MAX_BODY:
        raise ProxyHeaderError(TOO_LONG, f"a PROXY header of {body} bytes, above the {MAX_BODY} accepted")
    family = FAMILIES[family_transport >> 4]
    needed = _ADDRESS_BYTES[family]
    if version_command & 0xF == 0x1 and body < needed:
        raise ProxyHeaderError(
            MALFORMED, f"a PROXY header of {body} bytes cannot hold {family} addresses ({needed})"
        )
    return PREFIX + int(body)


def parse_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `data` and its length, or None if `data` is a valid start that is
    not complete yet. Raises ProxyHeaderError as soon as `data` cannot be one."""
    if len(data) < PREFIX:
        _check_prefix(data)
        return None
    total = _header_length(data[:PREFIX])
    if len(data) < total:
        return None
    command = COMMANDS[data[12] & 0xF]
    family = FAMILIES[data[13] >> 4]
    transport = TRANSPORTS[data[13] & 0xF]
    body = bytes(data[PREFIX:total])
    if command == "local":
        # The balancer speaking for itself: the addresses (if any) are to be ignored, TLVs too.
        return ProxyHeader(command, family, transport, length=total), total
    used = _ADDRESS_BYTES[family]
    source, destination = _addresses(family, body[:used])
    return ProxyHeader(command, family, transport, source, destination, _tlv_types(body[used:]), total), total


def _addresses(family: str, raw: bytes) -> tuple[tuple[str, int] | str | None, tuple[str, int] | str | None]:
    if family == "inet":
        src, dst, sport, dport = struct.unpack("!4s4sHH", raw)
        return (str(ipaddress.IPv4Address(src)), sport), (str(ipaddress.IPv4Address(dst)), dport)
    if family == "inet6":
        src, dst, sport, dport = struct.unpack("!16s16sHH", raw)
        return (str(ipaddress.IPv6Address(src)), sport), (str(ipaddress.IPv6Address(dst)), dport)
    if family == "unix":
        return _path(raw[:108]), _path(raw[108:])
    return None, None


def _path(raw: bytes) -> str | None:
    path = raw.split(b"\x00", 1)[0]
    return path.decode("utf-8", "backslashreplace") if path else None


def _tlv_types(raw: bytes) -> tuple[int, ...]:
    """Walk the TLVs after the addresses; each must fit in the header."""
    types: list[int] = []
    at = 0
    while at < len(raw):
        if len(raw) - at < 3:
            raise ProxyHeaderError(MALFORMED, "a PROXY header's TLV is cut short")
        kind, size = raw[at], struct.unpack_from("!H", raw, at + 1)[0]
        at += 3 + size
        if at > len(raw):
            raise ProxyHeaderError(MALFORMED, f"a PROXY header's TLV (type 0x{kind:02x}) runs past its end")
        types.append(kind)
    return tuple(types)


class ProxyHeaderReader:
    """Reads one header from bytes fed in any pieces; see the module's docstring."""

    __slots__ = ("_buffer", "header", "rest")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.header: ProxyHeader | None = None
        self.rest = b""  # what was fed after the header's end, untouched

    def wanted(self) -> int:
        """How many more bytes the header needs (0 once it is complete). Reading exactly this many
        never takes a byte past the header's end."""
        if self.header is not None:
            return 0
        have = len(self._buffer)
        if have < PREFIX:
            return PREFIX - have
        return _header_length(bytes(self._buffer[:PREFIX])) - have

    def feed(self, data: bytes) -> ProxyHeader | None:
        """Take the next bytes; the header once it is complete (then every later call returns it and
        keeps what it is given in `rest`). Raises ProxyHeaderError."""
        if self.header is not None:
            self.rest += data
            return self.header
        self._buffer += data
        parsed = parse_header(bytes(self._buffer))
        if parsed is None:
            return None
        self.header, used = parsed
        self.rest = bytes(self._buffer[used:])
        self._buffer.clear()
        return self.header


def encode_header(
    source: tuple[str, int] | None = None,
    destination: tuple[str, int] | None = None,
    *,
    local: bool = False,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A version 2 header (what a balancer sends): PROXY with IPv4 or IPv6 addresses, or LOCAL.
    For tests and tools; the gateway only reads headers."""
    extra = b"".join(bytes([kind]) + struct.pack("!H", len(value)) + value for kind, value in tlvs)
    if local or source is None or destination is None:
        return SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", len(extra)) + extra
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        raise ValueError("source and destination must be of the same IP version")
    family = 0x11 if src.version == 4 else 0x21
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    body = addresses + extra
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body
