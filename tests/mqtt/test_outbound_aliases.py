"""Outbound topic aliases (5.0 §3.3.2.3.4): the byte rewrite and the per-connection choice of aliases."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt.codec import decode_packet, encode, encode_publish, with_topic_alias
from gateway.mqtt.packets import Connect, Properties, ProtocolVersion, Publish
from gateway.mqtt.session import ServerSession
from tests.mqtt.codec_strategies import publishes

V5 = ProtocolVersion.MQTT_5


def test_golden_bytes_setting_then_using_an_alias() -> None:
    data = encode_publish(Publish("a/b", b"hi", qos=1, packet_id=7), V5)
    assert data == bytes.fromhex("320a 0003 612f62 0007 00 6869")
    # topic kept, property length 3: Topic Alias (0x23) = 1
    assert with_topic_alias(data, 1, send_topic=True) == bytes.fromhex("320d 0003 612f62 0007 03 230001 6869")
    # zero-length topic name: the alias stands for it
    assert with_topic_alias(data, 1, send_topic=False) == bytes.fromhex("320a 0000 0007 03 230001 6869")


@given(publishes(V5), st.integers(1, 0xFFFF), st.booleans())
def test_the_rewrite_decodes_to_the_same_publish_with_the_alias(
    publish: Publish, alias: int, send_topic: bool
) -> None:
    publish = replace(publish, properties=replace(publish.properties, topic_alias=None))
    if not publish.topic:
        publish = replace(publish, topic="t")
    out = decode_packet(with_topic_alias(encode(publish, V5), alias, send_topic=send_topic), V5)
    assert isinstance(out, Publish)
    assert out.properties.topic_alias == alias
    assert out.topic == (publish.topic if send_topic else "")
    assert replace(out, topic=publish.topic, properties=replace(out.properties, topic_alias=None)) == publish


def session(client_maximum: int | None, ours: int = 32, packet_size: int | None = None) -> ServerSession:
    s = ServerSession(now=0.0, topic_alias_maximum=ours)
    props = Properties(topic_alias_maximum=client_maximum, maximum_packet_size=packet_size)
    s.receive_data(encode(Connect("c", V5, properties=props), V5), 0.0)
    assert isinstance(s.next_event(), Connect)
    return s


def sent(s: ServerSession, topic: str) -> Publish:
    out = decode_packet(s.aliased(encode_publish(Publish(topic, b"x"), V5), topic), V5)
    assert isinstance(out, Publish)
    return out


def test_no_aliases_unless_the_client_asks_and_never_more_than_ours() -> None:
    assert session(None).outbound_alias_maximum == 0
    assert session(0).outbound_alias_maximum == 0
    assert session(10).outbound_alias_maximum == 10
    assert session(65535, ours=32).outbound_alias_maximum == 32


def test_a_repeated_topic_is_named_once_then_sent_by_alias() -> None:
    s = session(2)
    first, second = sent(s, "fleet/TRK-1/telemetry/gps"), sent(s, "fleet/TRK-1/telemetry/gps")
    assert (first.topic, first.properties.topic_alias) == ("fleet/TRK-1/telemetry/gps", 1)
    assert (second.topic, second.properties.topic_alias) == ("", 1)
    other = sent(s, "fleet/TRK-2/telemetry/gps")
    assert (other.topic, other.properties.topic_alias) == ("fleet/TRK-2/telemetry/gps", 2)


def test_when_every_alias_is_taken_a_topic_must_miss_twice_to_take_the_least_recently_used() -> None:
    s = session(2)
    sent(s, "a")
    sent(s, "b")
    sent(s, "a")  # b is now the least recently used
    once = sent(s, "c")
    assert (once.topic, once.properties.topic_alias) == ("c", None)  # seen once: no alias, no eviction
    twice = sent(s, "c")
    assert (twice.topic, twice.properties.topic_alias) == ("c", 2)  # takes b's alias, naming itself
    assert sent(s, "c").topic == "" and sent(s, "a").properties.topic_alias == 1
    again = sent(s, "b")  # b lost its alias: it is a stranger again
    assert (again.topic, again.properties.topic_alias) == ("b", None)


def test_a_stream_of_distinct_topics_evicts_nothing() -> None:
    s = session(4)
    for i in range(4):
        sent(s, f"hot/{i}")
    for i in range(1000):
        assert sent(s, f"cold/{i}").properties.topic_alias is None
    assert all(sent(s, f"hot/{i}").topic == "" for i in range(4))


def test_an_alias_that_would_not_fit_the_clients_maximum_packet_size_is_not_set() -> None:
    plain = len(encode_publish(Publish("t/1", b"x"), V5))
    s = session(4, packet_size=plain)  # exactly the plain PUBLISH: the 3 alias bytes do not fit
    out = sent(s, "t/1")
    assert (out.topic, out.properties.topic_alias) == ("t/1", None)
    assert sent(s, "t/1").properties.topic_alias is None  # nothing was remembered
