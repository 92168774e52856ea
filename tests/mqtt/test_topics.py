"""Topic validation, matching, the subscription trie and the filter algebra.

Tables carry the spec's own examples (MQTT 5.0 §4.7, §4.8); hypothesis checks the trie and the algebra
against brute force over a small level alphabet so that collisions, empty levels and `$` levels are
common rather than rare.
"""

from __future__ import annotations

import itertools
from collections import Counter
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt.errors import TopicFilterInvalid, TopicNameInvalid
from gateway.mqtt.topics import (
    MAX_TOPIC_BYTES,
    SharedFilter,
    SubscriptionTrie,
    filter_covers,
    filters_intersect,
    parse_shared,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "topic",
    ["a", "/", "//", "a/b/c", "/a", "a/", " ", "sport/tennis/player1", "$SYS/broker/load", "ü/€/𝄞",
     "fleet/TRK-00042/telemetry/gps", "a" * MAX_TOPIC_BYTES, "$share/g/x"],
)
def test_valid_topic_names(topic: str) -> None:
    validate_topic_name(topic)


@pytest.mark.parametrize(
    "topic",
    ["", "+", "#", "a/+", "a/#", "a+/b", "sport/tennis#", "a\0b", "a" * (MAX_TOPIC_BYTES + 1),
     "€" * (MAX_TOPIC_BYTES // 3 + 1), "bad\ud800surrogate" * 2000],
)
def test_invalid_topic_names(topic: str) -> None:
    with pytest.raises(TopicNameInvalid) as caught:
        validate_topic_name(topic)
    assert caught.value.reason_code == 0x90
    assert caught.value.peer_at_fault


@pytest.mark.parametrize(
    "topic_filter",
    ["a", "#", "+", "/", "+/+", "/+", "sport/#", "sport/tennis/#", "sport/+/player1", "+/tennis/#",
     "$SYS/#", "a//b", "fleet/{unit}/cmd/#", "$share/g/a/#", "$share/group-1/+", "$share/g//",
     "$share/g/$SYS/#", "$share", "$sharex/a", "a" * MAX_TOPIC_BYTES],
)
def test_valid_topic_filters(topic_filter: str) -> None:
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    "topic_filter",
    ["", "sport/tennis#", "sport/tennis/#/ranking", "#/a", "##", "sport+", "a/b+/c", "+a", "a/+b",
     "a\0", "a" * (MAX_TOPIC_BYTES + 1),
     "$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a/#/b",
     "$share/g/a+", "$share/g/" + "a" * MAX_TOPIC_BYTES],
)
def test_invalid_topic_filters(topic_filter: str) -> None:
    with pytest.raises(TopicFilterInvalid) as caught:
        validate_topic_filter(topic_filter)
    assert caught.value.reason_code == 0x8F


def test_error_messages_do_not_echo_huge_input() -> None:
    with pytest.raises(TopicNameInvalid) as caught:
        validate_topic_name("x" * 10_000 + "#")
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/b", SharedFilter(None, "a/b")),
        ("$share/g/a/b", SharedFilter("g", "a/b")),
        ("$share/dispatch/fleet/+/control/#", SharedFilter("dispatch", "fleet/+/control/#")),
        ("$share/g//", SharedFilter("g", "/")),
        ("$share", SharedFilter(None, "$share")),
    ],
)
def test_parse_shared(topic_filter: str, expected: SharedFilter) -> None:
    parsed = parse_shared(topic_filter)
    assert parsed == expected
    assert parsed.is_shared == (expected.group is not None)


# ---------------------------------------------------------------------------------------- matching

MATCHES = [
    # §4.7.1.2 multi-level wildcard
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    # §4.7.1.3 single-level wildcard
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "finance", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/tennis/#", "sport/tennis/player1/ranking", True),
    # §4.7.2 $-topics
    ("#", "$SYS/x", False),
    ("+/x", "$SYS/x", False),
    ("+", "$SYS", False),
    ("$SYS/#", "$SYS/x", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+", "$SYS/x", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("a/+", "a/$x", True),  # the rule is about the first level only
    # literals, case, empty levels
    ("a/b", "a/b", True),
    ("a/b", "A/b", False),
    ("a/b", "a/b/", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("fleet/{unit}/cmd/#", "fleet/{unit}/cmd/mode", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCHES)
def test_trie_agrees_with_table(topic_filter: str, topic: str, expected: bool) -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add(topic_filter, "k", 1)
    assert trie.match(topic) == ([("k", 1)] if expected else [])


# ------------------------------------------------------------------ reference model for brute force
#
# Written from the spec's definitions, independently of the implementation, over level lists.


def ref_matches(filter_levels: tuple[str, ...], topic_levels: tuple[str, ...]) -> bool:
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    return _ref_rest(filter_levels, topic_levels)


def _ref_rest(f: tuple[str, ...], t: tuple[str, ...]) -> bool:
    if not f:
        return not t
    if f[0] == "#":
        return True
    if not t:
        return False
    return (f[0] == "+" or f[0] == t[0]) and _ref_rest(f[1:], t[1:])


FILTER_LEVELS = ["a", "b", "", "$s", "+"]
# "z" and "$z" are levels no filter names: the fresh values a real topic could carry.
TOPIC_LEVELS = ["a", "b", "", "$s", "z", "$z"]
MAX_FILTER_DEPTH = 3  # levels before an optional trailing "#"
MAX_TOPIC_DEPTH = MAX_FILTER_DEPTH + 1

ALL_TOPICS = [
    "/".join(levels)
    for depth in range(1, MAX_TOPIC_DEPTH + 1)
    for levels in itertools.product(TOPIC_LEVELS, repeat=depth)
    if "/".join(levels)  # "" is not a topic name
]


def all_filters(max_depth: int) -> list[str]:
    return sorted({
        "/".join(levels + tail)
        for depth in range(0, max_depth + 1)
        for levels in itertools.product(FILTER_LEVELS, repeat=depth)
        for tail in ((), ("#",))
    } - {""})


SHALLOW = all_filters(2)  # where the edge cases live ("#", "/#", "+", "$s/#"...): checked exhaustively


@st.composite
def filters(draw: st.DrawFn, max_depth: int = MAX_FILTER_DEPTH) -> str:
    levels = draw(st.lists(st.sampled_from(FILTER_LEVELS), min_size=0, max_size=max_depth))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    text = "/".join(levels)
    if text == "":  # the one invalid combination this alphabet can produce
        text = "a"
    return text


@cache
def matched_topics(topic_filter: str) -> frozenset[str]:
    f = tuple(topic_filter.split("/"))
    return frozenset(t for t in ALL_TOPICS if ref_matches(f, tuple(t.split("/"))))


def test_reference_model_agrees_with_topic_matches_exhaustively() -> None:
    for f in all_filters(MAX_FILTER_DEPTH):
        validate_topic_filter(f)
        for t in ALL_TOPICS:
            assert topic_matches(f, t) == ref_matches(tuple(f.split("/")), tuple(t.split("/"))), (f, t)


# --------------------------------------------------------------------------------------------- trie


def test_trie_add_replace_remove_prune() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    assert trie.add("a/+/c", "s1", 1)
    assert not trie.add("a/+/c", "s1", 2)  # replaced
    assert trie.add("a/+/c", "s2", 3)
    assert trie.add("a/#", "s1", 4)
    assert len(trie) == 3
    assert sorted(trie.match("a/b/c")) == [("s1", 2), ("s1", 4), ("s2", 3)]
    assert trie.remove("a/+/c", "s1")
    assert not trie.remove("a/+/c", "s1")
    assert not trie.remove("a/x/c", "s2")
    assert not trie.remove("nope", "s2")
    assert trie.remove("a/+/c", "s2")
    assert trie.remove("a/#", "s1")
    assert len(trie) == 0
    assert trie._root.children == {}  # nothing left behind


def test_trie_remove_keeps_shared_prefixes() -> None:
    trie: SubscriptionTrie[str, None] = SubscriptionTrie()
    trie.add("a/b", "s", None)
    trie.add("a/b/c", "s", None)
    trie.remove("a/b/c", "s")
    assert trie.match("a/b") == [("s", None)]
    trie.add("a/b/c", "s", None)
    trie.remove("a/b", "s")
    assert trie.match("a/b/c") == [("s", None)]
    assert trie.match("a/b") == []


def test_trie_clear_key_and_filters_of() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    for f in ("a", "a/#", "+/b", "$SYS/#"):
        trie.add(f, "gone", 0)
    trie.add("a", "stays", 1)
    assert trie.filters_of("gone") == {"a", "a/#", "+/b", "$SYS/#"}
    assert trie.clear_key("gone") == 4
    assert trie.clear_key("gone") == 0
    assert trie.filters_of("gone") == frozenset()
    assert len(trie) == 1
    assert sorted(trie.filters()) == ["a"]
    assert trie.match("a") == [("stays", 1)]


def test_trie_one_key_many_filters_reported_per_filter() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("fleet/#", "ops", 0)
    trie.add("fleet/+/telemetry/gps", "ops", 1)
    trie.add("fleet/TRK-1/telemetry/gps", "ops", 2)
    assert sorted(trie.match("fleet/TRK-1/telemetry/gps")) == [("ops", 0), ("ops", 1), ("ops", 2)]


def test_trie_rejects_invalid_and_shared_filters() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    with pytest.raises(TopicFilterInvalid):
        trie.add("a/#/b", "k", 0)
    with pytest.raises(TopicFilterInvalid) as caught:
        trie.add("$share/g/a", "k", 0)
    assert not caught.value.peer_at_fault
    assert len(trie) == 0


def test_trie_survives_very_deep_wildcard_filters() -> None:
    # A peer may subscribe to thousands of "+" levels; matching must not recurse per level.
    depth = 20_000
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    trie.add("/".join(["+"] * depth), "deep", 0)
    trie.add("/".join(["+"] * (depth - 1) + ["#"]), "deep#", 1)
    topic = "/".join(["x"] * depth)
    assert sorted(trie.match(topic)) == [("deep", 0), ("deep#", 1)]


def test_trie_dollar_topics_only_reach_literal_first_levels() -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    for i, f in enumerate(["#", "+/#", "+/x", "$SYS/#", "$SYS/+", "$SYS/x"]):
        trie.add(f, f, i)
    assert sorted(k for k, _ in trie.match("$SYS/x")) == ["$SYS/#", "$SYS/+", "$SYS/x"]
    assert sorted(k for k, _ in trie.match("SYS/x")) == ["#", "+/#", "+/x"]


def instances(topic_filter: str) -> list[str]:
    """Topics at a filter's edges: '#' dropped (the parent level) or filled, '+' filled ("$z" first)."""
    options: list[list[tuple[str, ...]]] = []
    for i, level in enumerate(topic_filter.split("/")):
        if level == "#":
            options.append([(), ("z",)])
        elif level == "+":
            options.append([("z",), ("$z",)] if i == 0 else [("z",)])
        else:
            options.append([(level,)])
    topics = {"/".join(itertools.chain.from_iterable(combo)) for combo in itertools.product(*options)}
    return sorted(t for t in topics if t)  # "" (no level, or one empty level) is not a topic name


trie_ops = st.lists(
    st.tuples(st.booleans(), filters(), st.sampled_from(["k1", "k2", "k3"]), st.integers(0, 3)),
    max_size=40,
)


@settings(max_examples=150)
@given(ops=trie_ops, probes=st.lists(st.sampled_from(ALL_TOPICS), min_size=1, max_size=25))
def test_trie_against_brute_force(
    ops: list[tuple[bool, str, str, int]], probes: list[str]
) -> None:
    trie: SubscriptionTrie[str, int] = SubscriptionTrie()
    model: dict[tuple[str, str], int] = {}
    for is_add, f, key, value in ops:
        if is_add:
            assert trie.add(f, key, value) == ((f, key) not in model)
            model[(f, key)] = value
        else:
            assert trie.remove(f, key) == ((f, key) in model)
            model.pop((f, key), None)
        assert len(trie) == len(model)
    assert sorted(trie.filters()) == sorted({f for f, _ in model})
    for key in ("k1", "k2", "k3"):
        assert trie.filters_of(key) == {f for f, k in model if k == key}
    for topic in [*probes, *(t for f, _ in model for t in instances(f))]:
        expected = Counter((k, v) for (f, k), v in model.items() if topic_matches(f, topic))
        assert Counter(trie.match(topic)) == expected
    for f, key in list(model):
        trie.remove(f, key)
    assert len(trie) == 0 and trie._root.children == {}


# ----------------------------------------------------------------------------------- filter algebra


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a/#", "a", True),  # '#' matches the parent level
        ("a/+", "a", False),
        ("+/b", "a/+", True),
        ("#", "$SYS/x", False),  # the $ rule
        ("+/#", "$SYS/#", False),
        ("$SYS/#", "$SYS", True),
        ("/#", "+", False),  # the only candidate would be the empty topic ""
        ("/#", "+/+", True),
        ("#", "#", True),
        ("fleet/+/diag/#", "fleet/+/control/#", False),
        ("fleet/+/#", "fleet/+/control/#", True),
        ("fleet/{unit}/diag/#", "fleet/+/diag/gps", True),
    ],
)
def test_filters_intersect_table(a: str, b: str, expected: bool) -> None:
    assert filters_intersect(a, b) is expected
    assert filters_intersect(b, a) is expected


@pytest.mark.parametrize(
    ("general", "specific", "expected"),
    [
        ("#", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/#", "$SYS/#", False),
        ("$SYS/#", "$SYS/+", True),
        ("a/#", "a", True),
        ("a/+", "a", False),
        ("a/#", "a/+/b", True),
        ("a/+", "a/#", False),
        ("/+/#", "/#", True),  # "/#" cannot match the one-level topic ""
        ("+/+", "/#", False),
        ("fleet/+/telemetry/#", "fleet/TRK-1/telemetry/gps", True),
        ("fleet/+/telemetry/#", "fleet/+/#", False),
    ],
)
def test_filter_covers_table(general: str, specific: str, expected: bool) -> None:
    assert filter_covers(general, specific) is expected


def test_algebra_rejects_invalid_and_shared_filters() -> None:
    with pytest.raises(TopicFilterInvalid):
        filters_intersect("a/#/b", "a")
    with pytest.raises(TopicFilterInvalid):
        filter_covers("#", "$share/g/a")


def test_algebra_is_linear_in_depth() -> None:
    deep = "/".join(["+"] * 30_000)
    assert filters_intersect(deep, "#")
    assert not filter_covers(deep, "#")
    assert filter_covers("#", deep)


def test_filter_algebra_exhaustively_on_shallow_filters() -> None:
    for a, b in itertools.product(SHALLOW, repeat=2):
        assert filters_intersect(a, b) == bool(matched_topics(a) & matched_topics(b)), (a, b)
        assert filter_covers(a, b) == (matched_topics(b) <= matched_topics(a)), (a, b)


@settings(max_examples=400)
@given(a=filters(), b=filters())
def test_filters_intersect_is_sound_and_complete(a: str, b: str) -> None:
    assert filters_intersect(a, b) == bool(matched_topics(a) & matched_topics(b))


@settings(max_examples=400)
@given(general=filters(), specific=filters())
def test_filter_covers_is_sound_and_complete(general: str, specific: str) -> None:
    assert filter_covers(general, specific) == (matched_topics(specific) <= matched_topics(general))


@given(f=filters())
def test_every_filter_covers_itself_and_intersects_itself(f: str) -> None:
    assert filter_covers(f, f)
    assert filters_intersect(f, f)  # every valid filter matches at least one topic
