"""The PROXY v2 parser (gateway/edge/proxy_protocol.py): every family, every way to be wrong, and a
header split over any reads leaves what follows it (the TLS ClientHello) untouched."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.edge.proxy_protocol import (
    MAX_BODY,
    SIGNATURE,
    ProxyHeaderError,
    ProxyHeaderReader,
    encode_header,
    parse_header,
)

CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + bytes(range(64))  # the start of a TLS record


def header(version_command: int, family: int, body: bytes) -> bytes:
    return SIGNATURE + bytes([version_command, family]) + struct.pack("!H", len(body)) + body


def read_all(data: bytes, sizes: list[int]) -> ProxyHeaderReader:
    """Feed `data` in pieces of the given sizes (the last piece takes the rest)."""
    reader = ProxyHeaderReader()
    at = 0
    for size in sizes:
        reader.feed(data[at : at + size])
        at += size
    reader.feed(data[at:])
    return reader


def test_ipv4_source_and_destination() -> None:
    raw = encode_header(("203.0.113.7", 50123), ("10.0.0.11", 8883))
    parsed = parse_header(raw + CLIENT_HELLO)
    assert parsed is not None
    found, used = parsed
    assert used == len(raw) == 16 + 12
    assert found.command == "proxy" and found.family == "inet" and found.transport == "stream"
    assert found.source_ip == ("203.0.113.7", 50123)
    assert found.destination == ("10.0.0.11", 8883)


def test_ipv6_source() -> None:
    raw = encode_header(("2001:db8::7", 443), ("2001:db8::1", 8883))
    parsed = parse_header(raw)
    assert parsed is not None
    assert parsed[0].family == "inet6" and parsed[0].source_ip == ("2001:db8::7", 443)
    assert parsed[1] == 16 + 36


def test_unix_and_unspec_sources_name_no_ip() -> None:
    paths = b"/run/client.sock".ljust(108, b"\0") + b"/run/gw.sock".ljust(108, b"\0")
    unix = parse_header(header(0x21, 0x31, paths))
    assert unix is not None
    assert unix[0].family == "unix" and unix[0].source == "/run/client.sock" and unix[0].source_ip is None
    unspec = parse_header(header(0x21, 0x00, b""))
    assert unspec is not None and unspec[0].source_ip is None


def test_local_command_ignores_addresses_and_tlvs() -> None:
    found = parse_header(header(0x20, 0x11, bytes(12) + b"\x04\x00\x02hi"))
    assert found is not None
    assert found[0].command == "local" and found[0].source_ip is None
    assert parse_header(encode_header(local=True)) is not None  # HAProxy's check: LOCAL, UNSPEC, no body


def test_tlvs_are_walked_and_their_types_kept() -> None:
    raw = encode_header(
        ("192.0.2.1", 1), ("192.0.2.2", 2), tlvs=((0x05, b"unique-id"), (0x04, b""), (0xE0, b"x"))
    )
    parsed = parse_header(raw)
    assert parsed is not None and parsed[0].tlv_types == (0x05, 0x04, 0xE0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CLIENT_HELLO, "missing"),
        (b"GET / HTTP/1.1\r\n", "missing"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "missing"),  # one byte of the signature wrong
        (b"PROXY TCP4 203.0.113.7 10.0.0.11 50123 8883\r\n", "version_1"),
        (b"PROXY UNKNOWN\r\n", "version_1"),  # shorter than a v2 prefix: refused at once, not awaited
        (header(0x11, 0x11, bytes(12)), "malformed"),  # version 1 in the binary form
        (header(0x31, 0x11, bytes(12)), "malformed"),  # version 3
        (header(0x22, 0x11, bytes(12)), "malformed"),  # command 2
        (header(0x21, 0x41, bytes(12)), "malformed"),  # family 4
        (header(0x21, 0x13, bytes(12)), "malformed"),  # transport 3
        (header(0x21, 0x11, bytes(11)), "malformed"),  # too short for IPv4 addresses
        (header(0x21, 0x21, bytes(12)), "malformed"),  # too short for IPv6 addresses
        (header(0x21, 0x31, bytes(215)), "malformed"),  # too short for Unix paths
        (header(0x21, 0x11, bytes(12) + b"\x04\x00"), "malformed"),  # a TLV cut in its length
        (header(0x21, 0x11, bytes(12) + b"\x04\x00\x09abc"), "malformed"),  # a TLV past the end
        (SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_BODY + 1), "too_long"),
        (SIGNATURE + b"\x21\x11\xff\xff", "too_long"),
    ],
)
def test_what_is_refused_and_why(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_header(data)
    assert caught.value.reason == reason
    with pytest.raises(ProxyHeaderError):  # the reader refuses it too, fed one byte at a time
        reader = ProxyHeaderReader()
        for byte in data:
            reader.feed(bytes([byte]))
            reader.wanted()


def test_a_valid_start_is_incomplete_not_refused() -> None:
    raw = encode_header(("203.0.113.7", 1), ("10.0.0.1", 2))
    for cut in range(len(raw)):
        assert parse_header(raw[:cut]) is None


def test_oversize_is_refused_from_the_prefix_alone() -> None:
    """A length above the bound is refused on its first 16 bytes: nothing more is read or held."""
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError) as caught:
        reader.feed(SIGNATURE + b"\x21\x11" + struct.pack("!H", 60000))
    assert caught.value.reason == "too_long"


def test_wanted_never_reaches_past_the_header() -> None:
    raw = encode_header(("198.51.100.4", 65535), ("10.0.0.1", 8883), tlvs=((0x05, b"id"),))
    reader = ProxyHeaderReader()
    taken = 0
    while (want := reader.wanted()) > 0:
        reader.feed(raw[taken : taken + want])
        taken += want
    assert taken == len(raw) and reader.header is not None and reader.rest == b""


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return encode_header(local=True)
    v6 = draw(st.booleans())
    ip = st.ip_addresses(v=6 if v6 else 4).map(str)
    port = st.integers(0, 65535)
    tlvs = draw(st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4))
    return encode_header((draw(ip), draw(port)), (draw(ip), draw(port)), tlvs=tuple(tlvs))


@settings(max_examples=300, deadline=None)
@given(headers(), st.binary(max_size=200), st.lists(st.integers(0, 40), max_size=12))
def test_any_split_gives_the_same_header_and_the_rest_intact(
    raw: bytes, after: bytes, sizes: list[int]
) -> None:
    whole = parse_header(raw)
    assert whole is not None and whole[1] == len(raw)
    reader = read_all(raw + after, sizes)
    assert reader.header == whole[0]
    assert reader.rest == after  # the ClientHello (or anything) after the header, byte for byte


@settings(max_examples=300, deadline=None)
@given(headers(), st.integers(1, 60))
def test_exact_reads_take_the_header_and_nothing_more(raw: bytes, chunk: int) -> None:
    """How the listener reads: never more than `wanted()`, in pieces of at most `chunk` bytes."""
    stream = raw + CLIENT_HELLO
    reader = ProxyHeaderReader()
    at = 0
    while (want := reader.wanted()) > 0:
        piece = stream[at : at + min(want, chunk)]
        reader.feed(piece)
        at += len(piece)
    assert at == len(raw) and stream[at:] == CLIENT_HELLO and reader.rest == b""


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_is_refused_or_incomplete_never_a_crash(data: bytes) -> None:
    try:
        parse_header(data)
    except ProxyHeaderError as exc:
        assert exc.reason in ("missing", "version_1", "malformed", "too_long")


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=4, max_size=300))
def test_garbage_after_a_valid_prefix_is_refused_or_parsed_never_a_crash(tail: bytes) -> None:
    """A signature followed by anything: the fuzz that reaches the version, family, length and TLVs."""
    try:
        parsed = parse_header(SIGNATURE + tail)
    except ProxyHeaderError as exc:
        assert exc.reason in ("malformed", "too_long")
        return
    if parsed is not None:
        assert parsed[1] <= len(SIGNATURE) + len(tail)
