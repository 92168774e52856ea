"""Reading a PROXY v2 header off a real socket (gateway/edge/proxied.py): split over TCP segments, it
is put together, and what follows it stays in the socket for TLS, byte for byte."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.edge.proxied import Balancers, read_proxy_header
from gateway.edge.proxy_protocol import ProxyHeaderError, encode_header

CLIENT_HELLO = bytes.fromhex("1603010200010001fc0303") + bytes(range(200))


async def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    return ours, theirs


async def test_a_header_in_pieces_then_the_client_hello_left_intact() -> None:
    ours, theirs = await _pair()
    header = encode_header(("2001:db8::42", 50000), ("2001:db8::1", 8883), tlvs=((0x05, b"req-1"),))

    async def balancer() -> None:
        for piece in (header[:3], header[3:15], header[15:16], header[16:40], header[40:] + CLIENT_HELLO[:7]):
            theirs.sendall(piece)
            await asyncio.sleep(0.01)
        theirs.sendall(CLIENT_HELLO[7:])

    sending = asyncio.create_task(balancer())
    found = await read_proxy_header(ours, timeout=5)
    await sending
    assert found.source_ip == ("2001:db8::42", 50000) and found.tlv_types == (0x05,)
    left = b""
    ours.setblocking(True)
    while len(left) < len(CLIENT_HELLO):
        left += ours.recv(4096)
    assert left == CLIENT_HELLO
    ours.close()
    theirs.close()


@pytest.mark.parametrize(
    ("sent", "close", "reason"),
    [
        (b"", False, "timeout"),
        (encode_header(("192.0.2.1", 1), ("192.0.2.2", 2))[:20], False, "timeout"),
        (encode_header(("192.0.2.1", 1), ("192.0.2.2", 2))[:20], True, "closed"),
        (b"", True, "empty"),  # connected and closed: a TCP health check
        (CLIENT_HELLO, False, "missing"),
        (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n", False, "version_1"),
    ],
)
async def test_what_a_balancer_gets_for_no_valid_header(sent: bytes, close: bool, reason: str) -> None:
    ours, theirs = await _pair()
    theirs.sendall(sent)
    if close:
        theirs.close()
    with pytest.raises(ProxyHeaderError) as caught:
        await read_proxy_header(ours, timeout=0.2)
    assert caught.value.reason == reason
    ours.close()
    theirs.close()


def test_balancers_are_addresses_and_networks() -> None:
    balancers = Balancers("10.0.0.5 192.0.2.0/29 2001:db8::/64")
    assert "10.0.0.5:4000" in balancers and "192.0.2.7:1" in balancers and "[2001:db8::9]:1" in balancers
    assert (
        "10.0.0.6:4000" not in balancers
        and "192.0.2.8:1" not in balancers
        and "[2001:db9::9]:1" not in balancers
    )
    assert not Balancers("") and Balancers("10.0.0.5")
