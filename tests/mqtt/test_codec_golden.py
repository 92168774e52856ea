"""Golden bytes, both directions, for every control packet in both protocol versions."""

from __future__ import annotations

import pytest

from gateway.mqtt.codec import PacketReader, decode_packet, encode, encode_publish
from gateway.mqtt.packets import PACKET_TYPE_OF, Connect, PacketType, Publish

from .golden import DECODE_ONLY, ENCODE_ONLY, GOLDEN, V3, V5, Golden


def _ids(table: list[Golden]) -> list[str]:
    return [g.name for g in table]


@pytest.mark.parametrize("golden", GOLDEN, ids=_ids(GOLDEN))
def test_decode_golden(golden: Golden) -> None:
    assert decode_packet(golden.wire, golden.version) == golden.packet


@pytest.mark.parametrize("golden", GOLDEN, ids=_ids(GOLDEN))
def test_encode_golden(golden: Golden) -> None:
    assert encode(golden.packet, golden.version).hex(" ") == golden.wire.hex(" ")


@pytest.mark.parametrize("golden", ENCODE_ONLY, ids=_ids(ENCODE_ONLY))
def test_encode_only_golden(golden: Golden) -> None:
    assert encode(golden.packet, golden.version).hex(" ") == golden.wire.hex(" ")


@pytest.mark.parametrize("golden", DECODE_ONLY, ids=_ids(DECODE_ONLY))
def test_decode_only_golden(golden: Golden) -> None:
    assert decode_packet(golden.wire, golden.version) == golden.packet


def test_golden_table_covers_every_packet_type_in_both_versions() -> None:
    covered = {(PACKET_TYPE_OF[type(g.packet)], g.version) for g in GOLDEN}
    expected = {(t, v) for t in PacketType for v in (V3, V5) if not (t is PacketType.AUTH and v is V3)}
    assert expected - covered == set()


@pytest.mark.parametrize("golden", [g for g in GOLDEN if isinstance(g.packet, Publish)],
                         ids=lambda g: g.name)
def test_encode_publish_matches_encode(golden: Golden) -> None:
    assert isinstance(golden.packet, Publish)
    assert encode_publish(golden.packet, golden.version) == golden.wire


@pytest.mark.parametrize("golden", [g for g in GOLDEN if isinstance(g.packet, Connect)],
                         ids=lambda g: g.name)
def test_server_reader_takes_version_from_connect(golden: Golden) -> None:
    reader = PacketReader()
    assert reader.version is None
    reader.feed(golden.wire)
    assert reader.next_packet() == golden.packet
    assert reader.version is golden.version


def test_decoded_packets_without_properties_share_the_empty_value() -> None:
    from gateway.mqtt.packets import NO_PROPERTIES

    packet = decode_packet(bytes.fromhex("30 06 00 01 74 00 68 69"), V5)
    assert isinstance(packet, Publish)
    assert packet.properties is NO_PROPERTIES
    assert type(packet.payload) is bytes
