"""Golden wire bytes for every MQTT control packet, written by hand from the 3.1.1 and 5.0 specs.

`h()` reads hex byte pairs and 'quoted ASCII' so each line can be checked against the spec's figures
byte by byte; the comments give the Remaining Length arithmetic.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from gateway.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    RetainHandling,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from gateway.mqtt.reason_codes import ReasonCode as R

V3 = ProtocolVersion.MQTT_3_1_1
V5 = ProtocolVersion.MQTT_5


def h(spec: str) -> bytes:
    """Bytes from hex pairs and 'ascii' tokens separated by whitespace."""
    out = bytearray()
    for token in re.findall(r"'[^']*'|\S+", spec):
        out += token[1:-1].encode() if token.startswith("'") else bytes.fromhex(token)
    return bytes(out)


class Golden(NamedTuple):
    name: str
    version: ProtocolVersion
    wire: bytes
    packet: Packet


# Both directions hold: decode(wire) == packet and encode(packet) == wire.
GOLDEN: list[Golden] = [
    # ------------------------------------------------------------------------------------------ 3.1.1
    Golden("311-connect-minimal", V3,
           # RL 15 = name 6 + level 1 + flags 1 + keep alive 2 + client id 5
           h("10 0f 00 04 'MQTT' 04 02 00 3c 00 03 'abc'"),
           Connect("abc", V3, clean_start=True, keep_alive=60)),
    Golden("311-connect-will-user-password", V3,
           # flags ee = user 80 | password 40 | will retain 20 | will qos 1 08 | will 04 | clean 02
           # RL 67 = 10 + client id 9 + will topic 22 + will payload 9 + user 9 + password 8
           h("10 43 00 04 'MQTT' 04 ee 00 1e 00 07 'truck-1' 00 14 'fleet/truck-1/status' 00 07 'offline'"
             " 00 07 'truck-1' 00 06 's3cret'"),
           Connect("truck-1", V3, clean_start=True, keep_alive=30, username="truck-1", password=b"s3cret",
                   will=Will("fleet/truck-1/status", b"offline", qos=1, retain=True))),
    Golden("311-connect-persistent-no-keepalive", V3,
           h("10 0c 00 04 'MQTT' 04 00 00 00 00 00"),  # empty client id, clean session 0
           Connect("", V3, clean_start=False, keep_alive=0)),
    Golden("311-connack-session-present", V3, h("20 02 01 00"), Connack(session_present=True)),
    Golden("311-connack-bad-credentials", V3, h("20 02 00 04"),
           Connack(reason_code=R.BAD_USER_NAME_OR_PASSWORD)),
    Golden("311-connack-not-authorized", V3, h("20 02 00 05"), Connack(reason_code=R.NOT_AUTHORIZED)),
    Golden("311-connack-unacceptable-version", V3, h("20 02 00 01"),
           Connack(reason_code=R.UNSUPPORTED_PROTOCOL_VERSION)),
    Golden("311-publish-qos0", V3, h("30 07 00 03 'a/b' 'hi'"), Publish("a/b", b"hi")),
    Golden("311-publish-qos1-dup-retain", V3,
           h("3b 06 00 01 't' 00 0a 'x'"),  # 3b = PUBLISH | DUP 8 | QoS 1 2 | RETAIN 1
           Publish("t", b"x", qos=1, retain=True, dup=True, packet_id=10)),
    Golden("311-publish-qos2-empty-payload", V3, h("34 05 00 01 't' 12 34"),
           Publish("t", b"", qos=2, packet_id=0x1234)),
    Golden("311-publish-two-byte-length", V3,
           # RL 203 = 2 + 1 + 200 -> varint cb 01
           h("30 cb 01 00 01 't'") + bytes(200), Publish("t", bytes(200))),
    Golden("311-puback", V3, h("40 02 00 01"), Puback(1)),
    Golden("311-pubrec", V3, h("50 02 00 02"), Pubrec(2)),
    Golden("311-pubrel", V3, h("62 02 00 03"), Pubrel(3)),  # PUBREL flags are 0010
    Golden("311-pubcomp", V3, h("70 02 ff ff"), Pubcomp(0xFFFF)),
    Golden("311-subscribe", V3,
           h("82 0e 00 01 00 03 'a/+' 01 00 03 'b/#' 02"),  # RL 14 = 2 + 6 + 6
           Subscribe(1, (Subscription("a/+", 1), Subscription("b/#", 2)))),
    Golden("311-suback-mixed", V3, h("90 06 00 01 00 01 02 80"), Suback(1, (0, 1, 2, 0x80))),
    Golden("311-unsubscribe", V3, h("a2 0c 00 02 00 03 'a/+' 00 03 'b/c'"),
           Unsubscribe(2, ("a/+", "b/c"))),
    Golden("311-unsuback", V3, h("b0 02 00 02"), Unsuback(2)),
    Golden("311-pingreq", V3, h("c0 00"), Pingreq()),
    Golden("311-pingresp", V3, h("d0 00"), Pingresp()),
    Golden("311-disconnect", V3, h("e0 00"), Disconnect()),
    # -------------------------------------------------------------------------------------------- 5.0
    Golden("5-connect-minimal", V5, h("10 10 00 04 'MQTT' 05 02 00 3c 00 00 03 'abc'"), Connect("abc")),
    Golden("5-connect-properties-will-password", V5,
           # flags 56 = password 40 | will qos 2 10 | will 04 | clean 02 (no user name: allowed in 5.0)
           # properties (18): session expiry 3600, receive maximum 20, topic alias maximum 10, user k=v
           # will properties (14): payload format 1, content type "text", will delay 5
           # RL 61 = 10 + 1 + 18 + client id 4 + 1 + 14 + will topic 3 + will payload 6 + password 4
           h("10 3d 00 04 'MQTT' 05 56 00 3c"
             " 12 11 00 00 0e 10 21 00 14 22 00 0a 26 00 01 'k' 00 01 'v'"
             " 00 02 'c1'"
             " 0e 01 01 03 00 04 'text' 18 00 00 00 05"
             " 00 01 'w' 00 04 'gone' 00 02 'pw'"),
           Connect("c1", V5, clean_start=True, keep_alive=60, password=b"pw",
                   will=Will("w", b"gone", qos=2, properties=Properties(
                       payload_format_indicator=1, content_type="text", will_delay_interval=5)),
                   properties=Properties(session_expiry_interval=3600, receive_maximum=20,
                                         topic_alias_maximum=10, user_properties=(("k", "v"),)))),
    Golden("5-connect-auth", V5,
           h("10 22 00 04 'MQTT' 05 c2 00 0a 0e 15 00 05 'SCRAM' 16 00 01 01 17 00 00 01 'x'"
             " 00 01 'u' 00 01 'p'"),
           # flags c2 = user | password | clean; properties (14): auth method, auth data, problem info 0
           Connect("x", V5, keep_alive=10, username="u", password=b"p",
                   properties=Properties(authentication_method="SCRAM", authentication_data=b"\x01",
                                         request_problem_information=0))),
    Golden("5-connack-properties", V5,
           # properties (30): assigned id 9, server keep alive 3, receive maximum 3, maximum qos 2,
           # retain available 2, maximum packet size 5, wildcard/sub id/shared available 6
           h("20 21 00 00 1e 12 00 06 'auto-1' 13 00 78 21 00 64 24 01 25 00 27 00 01 00 00"
             " 28 01 29 01 2a 00"),
           Connack(properties=Properties(
               assigned_client_identifier="auto-1", server_keep_alive=120, receive_maximum=100,
               maximum_qos=1, retain_available=0, maximum_packet_size=65536,
               wildcard_subscription_available=1, subscription_identifier_available=1,
               shared_subscription_available=0))),
    Golden("5-connack-refused", V5, h("20 03 00 87 00"), Connack(reason_code=R.NOT_AUTHORIZED)),
    Golden("5-connack-session-present", V5, h("20 03 01 00 00"), Connack(session_present=True)),
    Golden("5-connack-server-moved", V5, h("20 0a 00 9d 07 1c 00 04 'host'"),
           Connack(reason_code=R.SERVER_MOVED, properties=Properties(server_reference="host"))),
    Golden("5-publish-qos0", V5, h("30 08 00 03 'a/b' 00 'hi'"), Publish("a/b", b"hi")),
    Golden("5-publish-many-properties", V5,
           # properties (59): payload format 2, expiry 5, content type 19, response topic 6,
           # correlation 5, subscription ids 1 (2) and 200 (3), topic alias 3, user a=1 and a=2 (14)
           # RL 85 = topic 14 + packet id 2 + property length 1 + 59 + payload 9
           h("32 55 00 0c 'fleet/t1/gps' 00 07 3b"
             " 01 01 02 00 00 00 3c 03 00 10 'application/json' 08 00 03 'r/1' 09 00 02 01 02"
             " 0b 01 0b c8 01 23 00 03 26 00 01 'a' 00 01 '1' 26 00 01 'a' 00 01 '2'"
             " '{\"lat\":1}'"),
           Publish("fleet/t1/gps", b'{"lat":1}', qos=1, packet_id=7, properties=Properties(
               payload_format_indicator=1, message_expiry_interval=60, content_type="application/json",
               response_topic="r/1", correlation_data=b"\x01\x02", subscription_identifiers=(1, 200),
               topic_alias=3, user_properties=(("a", "1"), ("a", "2"))))),
    Golden("5-publish-topic-alias-only", V5, h("30 07 00 00 03 23 00 05 'x'"),
           Publish("", b"x", properties=Properties(topic_alias=5))),
    Golden("5-puback-short", V5, h("40 02 00 01"), Puback(1)),
    Golden("5-puback-reason-only", V5, h("40 03 00 01 10"), Puback(1, R.NO_MATCHING_SUBSCRIBERS)),
    Golden("5-pubrec-reason-string", V5, h("50 0c 00 02 80 08 1f 00 05 'quota'"),
           Pubrec(2, R.UNSPECIFIED_ERROR, Properties(reason_string="quota"))),
    Golden("5-pubrel-not-found", V5, h("62 03 00 03 92"), Pubrel(3, R.PACKET_IDENTIFIER_NOT_FOUND)),
    Golden("5-pubcomp-short", V5, h("70 02 00 04"), Pubcomp(4)),
    Golden("5-pubcomp-user-property", V5, h("70 0b 00 04 00 07 26 00 01 'k' 00 01 'v'"),
           Pubcomp(4, properties=Properties(user_properties=(("k", "v"),)))),
    Golden("5-subscribe-options", V5,
           # options 2d = retain handling 2 (20) | retain as published 08 | no local 04 | QoS 1
           # RL 27 = packet id 2 + properties 3 + 14 + 8
           h("82 1b 00 0a 02 0b 05 00 0b 'fleet/+/gps' 2d 00 05 'cmd/#' 10"),
           Subscribe(10, (
               Subscription("fleet/+/gps", 1, no_local=True, retain_as_published=True,
                            retain_handling=RetainHandling.DO_NOT_SEND),
               Subscription("cmd/#", 0, retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION),
           ), Properties(subscription_identifiers=(5,)))),
    Golden("5-suback-mixed", V5, h("90 07 00 0a 00 01 00 87 a2"),
           Suback(10, (1, 0, R.NOT_AUTHORIZED, R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED))),
    Golden("5-suback-reason-string", V5, h("90 09 00 0a 05 1f 00 02 'no' 8f"),
           Suback(10, (R.TOPIC_FILTER_INVALID,), Properties(reason_string="no"))),
    Golden("5-unsubscribe", V5, h("a2 0f 00 0b 07 26 00 01 'k' 00 01 'v' 00 03 'a/b'"),
           Unsubscribe(11, ("a/b",), Properties(user_properties=(("k", "v"),)))),
    Golden("5-unsuback", V5, h("b0 05 00 0b 00 00 11"), Unsuback(11, (0, R.NO_SUBSCRIPTION_EXISTED))),
    Golden("5-pingreq", V5, h("c0 00"), Pingreq()),
    Golden("5-pingresp", V5, h("d0 00"), Pingresp()),
    Golden("5-disconnect-short", V5, h("e0 00"), Disconnect()),
    Golden("5-disconnect-reason-only", V5, h("e0 01 8e"), Disconnect(R.SESSION_TAKEN_OVER)),
    Golden("5-disconnect-properties", V5, h("e0 0d 04 0b 11 00 00 00 00 1f 00 03 'bye'"),
           Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE,
                      Properties(session_expiry_interval=0, reason_string="bye"))),
    Golden("5-auth-short", V5, h("f0 00"), Auth()),
    Golden("5-auth-continue", V5, h("f0 0e 18 0c 15 00 05 'SCRAM' 16 00 01 01"),
           Auth(R.CONTINUE_AUTHENTICATION,
                Properties(authentication_method="SCRAM", authentication_data=b"\x01"))),
]

# encode(packet, version) == wire, but decoding gives back less: what the version cannot carry is dropped
# or translated (5.0 reasons to 3.1.1 codes).
ENCODE_ONLY: list[Golden] = [
    Golden("311-connack-busy-to-unavailable", V3, h("20 02 00 03"), Connack(reason_code=R.SERVER_BUSY)),
    Golden("311-connack-banned-to-not-authorized", V3, h("20 02 00 05"), Connack(reason_code=R.BANNED)),
    Golden("311-suback-error-to-80", V3, h("90 04 00 01 01 80"), Suback(1, (1, R.NOT_AUTHORIZED))),
    Golden("311-puback-drops-reason-and-properties", V3, h("40 02 00 01"),
           Puback(1, R.NO_MATCHING_SUBSCRIBERS, Properties(reason_string="x"))),
    Golden("311-unsuback-drops-codes", V3, h("b0 02 00 02"), Unsuback(2, (0, 0x11))),
    Golden("311-disconnect-drops-reason", V3, h("e0 00"), Disconnect(R.SERVER_SHUTTING_DOWN)),
    Golden("311-subscribe-keeps-only-qos", V3, h("82 06 00 01 00 01 'a' 02"),
           Subscribe(1, (Subscription("a", 2, no_local=True, retain_as_published=True,
                                      retain_handling=RetainHandling.DO_NOT_SEND),))),
    Golden("311-publish-drops-properties", V3, h("30 04 00 01 't' 'x'"),
           Publish("t", b"x", properties=Properties(message_expiry_interval=5))),
    Golden("5-puback-empty-properties-object", V5, h("40 02 00 01"), Puback(1, 0, Properties())),
]

# decode(wire) == packet, but the encoder writes a shorter form of the same packet.
DECODE_ONLY: list[Golden] = [
    Golden("5-puback-explicit-empty-properties", V5, h("40 04 00 01 00 00"), Puback(1)),
    Golden("5-pubrel-reason-and-empty-properties", V5, h("62 04 00 01 92 00"),
           Pubrel(1, R.PACKET_IDENTIFIER_NOT_FOUND)),
    Golden("5-disconnect-explicit-empty-properties", V5, h("e0 02 00 00"), Disconnect()),
    Golden("5-auth-reason-only", V5, h("f0 01 19"), Auth(R.RE_AUTHENTICATE)),
    Golden("311-connack-reserved-return-code", V3, h("20 02 00 06"),
           Connack(reason_code=R.UNSPECIFIED_ERROR)),
    Golden("5-connack-unknown-reason", V5, h("20 03 00 ff 00"), Connack(reason_code=0xFF)),
    Golden("5-publish-properties-in-any-order", V5, h("30 0c 00 01 't' 08 23 00 01 02 00 00 00 09"),
           Publish("t", properties=Properties(topic_alias=1, message_expiry_interval=9))),
    Golden("5-publish-utf8-topic-with-bom", V5, h("30 06 00 03 ef bb bf 00"), Publish("\ufeff")),
]
