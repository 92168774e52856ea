"""The MQTT topic → NATS subject mapping of the cluster's backbone (gateway/broker/subjects.py):
names round-trip, every subject is a valid NATS subject, and a filter matches a topic in MQTT terms
iff one of its NATS filters matches the topic's subject in NATS terms."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.subjects import filter_to_subjects, subject_to_topic, topic_to_subject
from gateway.mqtt.errors import MqttError
from gateway.mqtt.topics import topic_matches, validate_topic_filter, validate_topic_name

# --- NATS semantics, from the NATS documentation ("Subject-based messaging") ----------------------
# A subject is tokens separated by "."; no token is empty; no whitespace anywhere. In a filter, a
# token "*" matches exactly one token, a last token ">" matches one or more tokens. A literal
# token equal to "*" or ">" would be a wildcard, so a subject to publish on must hold neither.

_WHITESPACE = {" ", "\t", "\r", "\n", "\f", "\v"}


def nats_valid_subject(subject: str, *, wildcards: bool) -> bool:
    if not subject or any(ch in _WHITESPACE for ch in subject):
        return False
    tokens = subject.split(".")
    if any(not t for t in tokens):
        return False
    for i, token in enumerate(tokens):
        if token in ("*", ">"):
            if not wildcards or (token == ">" and i != len(tokens) - 1):
                return False
        elif ("*" in token or ">" in token) and not wildcards:
            return False
    return True


def nats_matches(subject_filter: str, subject: str) -> bool:
    f = subject_filter.split(".")
    s = subject.split(".")
    for i, token in enumerate(f):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if token != "*" and token != s[i]:
            return False
    return len(f) == len(s)


# --- strategies: levels rich in what NATS reserves ------------------------------------------------

_tricky = st.sampled_from(["", ".", " ", "*", ">", "%", "%2E", "$", "$SYS", "a.b", "\t", "é", "a b", "x"])
_level = st.one_of(
    _tricky,
    st.text(alphabet=st.characters(blacklist_characters="/+#\x00", blacklist_categories=["Cs"]), max_size=6),
)
_topic = st.lists(_level, min_size=1, max_size=5).map("/".join).filter(bool)


def _valid_name(topic: str) -> bool:
    try:
        validate_topic_name(topic)
    except MqttError:
        return False
    return True


@st.composite
def _filter_for(draw: st.DrawFn, topic: str) -> str:
    """A filter made from the topic's levels (so matches are common), with + and # sprinkled in."""
    levels = topic.split("/")
    if draw(st.booleans()):  # sometimes an unrelated filter
        levels = draw(st.lists(_level, min_size=1, max_size=5))
    out = [draw(st.sampled_from([lv, lv, "+"])) for lv in levels]
    cut = draw(st.integers(0, len(out)))
    if draw(st.booleans()):
        out = [*out[:cut], "#"]
    return "/".join(out)


@settings(max_examples=400, deadline=None)
@given(_topic)
def test_names_round_trip_and_are_valid_subjects(topic: str) -> None:
    if not _valid_name(topic):
        return
    subject = topic_to_subject(topic)
    assert nats_valid_subject(subject, wildcards=False), subject
    assert subject_to_topic(subject) == topic


@settings(max_examples=800, deadline=None)
@given(st.data(), _topic)
def test_filter_matches_iff_nats_filter_matches(data: st.DataObject, topic: str) -> None:
    if not _valid_name(topic):
        return
    topic_filter = data.draw(_filter_for(topic))
    try:
        validate_topic_filter(topic_filter)
    except MqttError:
        return
    if topic_filter.startswith("$share/"):
        return  # shared subscriptions are mapped by their plain filter
    subjects = filter_to_subjects(topic_filter)
    for s in subjects:
        assert nats_valid_subject(s, wildcards=True), s
    mqtt = topic_matches(topic_filter, topic)
    nats = any(nats_matches(s, topic_to_subject(topic)) for s in subjects)
    assert mqtt == nats, (topic_filter, topic, subjects)


@pytest.mark.parametrize(
    ("topic", "subject"),
    [
        ("fleet/TRK-1/telemetry", "fleetgate.m.fleet.TRK-1.telemetry"),
        ("/fleet", "fleetgate.m.%.fleet"),
        ("fleet/", "fleetgate.m.fleet.%"),
        ("a//b", "fleetgate.m.a.%.b"),
        ("spBv1.0/plant 1", "fleetgate.m.spBv1%2E0.plant%201"),
        ("a/*/>", "fleetgate.m.a.%2A.%3E"),
        ("100%", "fleetgate.m.100%25"),
        ("$SYS/broker", "fleetgate.d.$SYS.broker"),
        ("café", "fleetgate.m.caf%C3%A9"),
    ],
)
def test_examples(topic: str, subject: str) -> None:
    assert topic_to_subject(topic) == subject
    assert subject_to_topic(subject) == topic


@pytest.mark.parametrize(
    ("topic_filter", "subjects"),
    [
        ("#", ("fleetgate.m.>",)),
        ("fleet/+/telemetry", ("fleetgate.m.fleet.*.telemetry",)),
        ("fleet/TRK-1/#", ("fleetgate.m.fleet.TRK-1", "fleetgate.m.fleet.TRK-1.>")),
        ("+/x", ("fleetgate.m.*.x",)),
        ("$SYS/#", ("fleetgate.d.$SYS", "fleetgate.d.$SYS.>")),
    ],
)
def test_filter_examples(topic_filter: str, subjects: tuple[str, ...]) -> None:
    assert filter_to_subjects(topic_filter) == subjects


def test_a_prefix_keeps_clusters_apart() -> None:
    assert topic_to_subject("a/b", "east") == "east.m.a.b"
    assert filter_to_subjects("a/#", "east") == ("east.m.a", "east.m.a.>")
    with pytest.raises(ValueError):
        subject_to_topic("east.m.a.b")
    with pytest.raises(ValueError):
        subject_to_topic("fleetgate.m.a%2")
