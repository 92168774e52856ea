"""Topic names, topic filters, the subscription trie and the filter algebra (MQTT 5.0 §4.7, §4.8).

Vocabulary (both protocol versions use the same rules):

- A *topic name* is what a PUBLISH carries: at least one character, no wildcards, no U+0000, at most
  65535 UTF-8 bytes. Levels are separated by `/`; empty levels are real levels (`/a` has two).
- A *topic filter* is what a SUBSCRIBE carries: `+` matches exactly one whole level, `#` matches any
  number of levels including none (so `a/#` also matches the parent `a`) and must be the whole last level.
- `$`-topics (`$SYS/...`, the gateway's own) are never matched by a filter whose first level is a
  wildcard (§4.7.2): `#` and `+/x` do not match `$SYS/x`; `$SYS/#` does.
- A *shared subscription* is `$share/{group}/{filter}` (§4.8.2): the group is at least one character
  without `/`, `+`, `#`; the filter after it is an ordinary filter. `parse_shared` splits it; everything
  else in this module works on ordinary (unshared) filters.

Everything here is pure and assumes nothing about the session; the codec and session call the
validators, the broker owns a `SubscriptionTrie`, and the policy engine uses `filters_intersect` and
`filter_covers` to prove things about grants (e.g. that quarantine rules can never reach a
vehicle-control topic) before a single client connects.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.mqtt.errors import TopicFilterInvalid, TopicNameInvalid

__all__ = [
    "MAX_TOPIC_BYTES",
    "SHARE_PREFIX",
    "SharedFilter",
    "SubscriptionTrie",
    "filter_covers",
    "filters_intersect",
    "parse_shared",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

MAX_TOPIC_BYTES = 65535  # a UTF-8 string field is prefixed by a two-byte length (§1.5.4)
SHARE_PREFIX = "$share/"

# A str of at most this many code points cannot exceed MAX_TOPIC_BYTES (UTF-8 uses at most 4 bytes per
# code point), so the common short topic is never encoded just to measure it.
_ALWAYS_SHORT_ENOUGH = MAX_TOPIC_BYTES // 4


def _too_long(text: str) -> bool:
    if len(text) <= _ALWAYS_SHORT_ENOUGH:
        return False
    try:
        return len(text.encode("utf-8")) > MAX_TOPIC_BYTES
    except UnicodeEncodeError:  # lone surrogates: not UTF-8 at all, so not a valid MQTT string
        return True


# --------------------------------------------------------------------------------------- validation


def validate_topic_name(topic: str) -> None:
    """Raise `TopicNameInvalid` unless `topic` may be the topic of a PUBLISH. Runs per PUBLISH."""
    if not topic:
        raise TopicNameInvalid("The topic name is empty.")
    if "+" in topic or "#" in topic:
        raise TopicNameInvalid(f"The topic name {_show(topic)} contains a wildcard (+ or #).")
    if "\0" in topic:
        raise TopicNameInvalid("The topic name contains the null character U+0000.")
    if _too_long(topic):
        raise TopicNameInvalid(f"The topic name is longer than {MAX_TOPIC_BYTES} UTF-8 bytes.")


def validate_topic_filter(topic_filter: str) -> None:
    """Raise `TopicFilterInvalid` unless `topic_filter` (shared or not) may appear in a SUBSCRIBE."""
    parse_shared(topic_filter)


@dataclass(frozen=True, slots=True)
class SharedFilter:
    """A subscription's filter split into its share group (None when not shared) and plain filter."""

    group: str | None
    topic_filter: str

    @property
    def is_shared(self) -> bool:
        return self.group is not None


def parse_shared(topic_filter: str) -> SharedFilter:
    """Validate a SUBSCRIBE filter and split off a `$share/{group}/` prefix.

    Parsing and validating are one step so that no caller can hold a split that was never checked.
    Raises `TopicFilterInvalid`.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        _check_plain_filter(topic_filter)
        return SharedFilter(None, topic_filter)
    if _too_long(topic_filter):
        raise TopicFilterInvalid(f"The topic filter is longer than {MAX_TOPIC_BYTES} UTF-8 bytes.")
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group:
        raise TopicFilterInvalid(f"The shared subscription {_show(topic_filter)} has an empty share name.")
    if "+" in group or "#" in group:
        raise TopicFilterInvalid(f"The share name {_show(group)} contains a wildcard (+ or #).")
    if not slash or not inner:
        raise TopicFilterInvalid(f"The shared subscription {_show(topic_filter)} has no topic filter.")
    _check_plain_filter(inner)
    return SharedFilter(group, inner)


def _check_plain_filter(topic_filter: str) -> None:
    if not topic_filter:
        raise TopicFilterInvalid("The topic filter is empty.")
    if "\0" in topic_filter:
        raise TopicFilterInvalid("The topic filter contains the null character U+0000.")
    if _too_long(topic_filter):
        raise TopicFilterInvalid(f"The topic filter is longer than {MAX_TOPIC_BYTES} UTF-8 bytes.")
    if "+" not in topic_filter and "#" not in topic_filter:
        return  # the common literal filter: nothing more to check, no split
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if level == "+" or (level == "#" and i == last):
            continue
        if "#" in level:
            raise TopicFilterInvalid(
                f"In the topic filter {_show(topic_filter)} '#' must be the whole last level."
            )
        if "+" in level:
            raise TopicFilterInvalid(f"In the topic filter {_show(topic_filter)} '+' must be a whole level.")


def _show(text: str, limit: int = 80) -> str:
    # Error messages go to logs and to peers (MQTT 5 reason strings); never echo megabytes back.
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ----------------------------------------------------------------------------------------- matching


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does the plain, valid `topic_filter` match the valid topic name `topic`?

    For shared subscriptions pass `parse_shared(f).topic_filter`. One-off checks only: the broker
    routes through `SubscriptionTrie`, which answers for all subscriptions at once.
    """
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False  # §4.7.2: wildcards at the first level do not reach the server's $-topics
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    levels = topic.split("/")
    n = len(levels)
    wanted = topic_filter.split("/")
    for i, want in enumerate(wanted):
        if want == "#":
            return True  # also when i == n: '#' matches the parent level
        if i >= n or (want != "+" and want != levels[i]):
            return False
    return len(wanted) == n


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Node(Generic[K, V]):
    __slots__ = ("children", "subs")

    def __init__(self) -> None:
        # Keyed by the filter level's text; "+" and "#" are ordinary keys. A topic level can never be
        # "+" or "#" (validate_topic_name), so a lookup by topic level never lands on a wildcard node.
        self.children: dict[str, _Node[K, V]] = {}
        self.subs: dict[K, V] = {}  # subscriptions whose filter ends exactly here


class SubscriptionTrie(Generic[K, V]):
    """Plain topic filters → {key: value}, matched against topic names level by level.

    One node per filter level. `match` walks the topic's levels with one dict lookup each, forking
    only where a `+` child exists and collecting any `#` child on the way, so its cost grows with the
    topic's depth and the number of wildcard branches it meets, not with the number of subscriptions.
    No cache: correctness first, and a publish rarely repeats its topic across units.

    A key is whatever identifies a subscriber to the broker (a session, or a (group, session) pair for
    shared subscriptions, whose plain filter is what gets stored here). Each (filter, key) pair holds
    one value, e.g. the subscription options.
    """

    __slots__ = ("_by_key", "_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self._count = 0
        # key → its filters, so a disconnect clears a session in O(its subscriptions) rather than by
        # walking every node of a fleet-sized trie.
        self._by_key: dict[K, set[str]] = {}

    def __len__(self) -> int:
        """Number of (filter, key) subscriptions held."""
        return self._count

    def add(self, topic_filter: str, key: K, value: V, *, placeholder: str | None = None) -> bool:
        """Subscribe `key` to a plain filter; True if new, False if it replaced the value.

        `placeholder`: a level the caller uses as a stand-in (gateway/policy/grants.py writes an
        identity's own id as U+0000, which no wire filter may hold); checked as an ordinary level."""
        _check_plain_filter(topic_filter if placeholder is None else topic_filter.replace(placeholder, "_"))
        if topic_filter.startswith(SHARE_PREFIX):
            # Storing "$share/g/x" literally would silently match nothing the client meant.
            raise TopicFilterInvalid(
                "Add the plain filter of a shared subscription (parse_shared(...).topic_filter).",
                peer_at_fault=False,
            )
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        is_new = key not in node.subs
        node.subs[key] = value
        if is_new:
            self._count += 1
            self._by_key.setdefault(key, set()).add(topic_filter)
        return is_new

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe; True if the subscription existed. Nodes left empty are pruned."""
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if key not in node.subs:
            return False
        del node.subs[key]
        self._count -= 1
        filters = self._by_key[key]
        filters.discard(topic_filter)
        if not filters:
            del self._by_key[key]
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subs or child.children:
                break
            del parent.children[level]
        return True

    def clear_key(self, key: K) -> int:
        """Remove every subscription of `key` (a session ended); return how many there were."""
        filters = self._by_key.get(key)
        if not filters:
            return 0
        removed = 0
        for topic_filter in list(filters):
            removed += self.remove(topic_filter, key)
        return removed

    def filters_of(self, key: K) -> frozenset[str]:
        """The plain filters `key` is subscribed to (for re-checking a live session after a policy change)."""
        return frozenset(self._by_key.get(key, ()))

    def filters(self) -> Iterator[str]:
        """Every distinct filter with at least one subscriber (order unspecified)."""
        stack: list[tuple[_Node[K, V], tuple[str, ...]]] = [(self._root, ())]
        while stack:
            node, path = stack.pop()
            if node.subs and path:
                yield "/".join(path)
            for level, child in node.children.items():
                stack.append((child, (*path, level)))

    def match(self, topic: str) -> list[tuple[K, V]]:
        """Every (key, value) whose filter matches the valid topic name `topic`.

        A key appears once per matching filter; merging them (max QoS, subscription identifiers) is the
        broker's business under MQTT 5 §3.3.4.
        """
        out: list[tuple[K, V]] = []
        levels = topic.split("/")
        if topic[:1] == "$":
            # §4.7.2: only filters whose first level is literally this $-level can match, so the root's
            # "+" and "#" children are skipped by starting one level down.
            first = self._root.children.get(levels[0])
            if first is not None:
                _collect(first, levels, 1, out)
        else:
            _collect(self._root, levels, 0, out)
        return out


def _collect(node: _Node[K, V], levels: list[str], i: int, out: list[tuple[K, V]]) -> None:
    # Iterative with an explicit stack, allocated only at the first "+" branch: a peer may subscribe to
    # a filter thousands of "+" levels deep, and recursion would turn that into a RecursionError in
    # the routing of someone else's PUBLISH.
    n = len(levels)
    pending: list[tuple[_Node[K, V], int]] | None = None
    while True:
        children = node.children
        if children:
            multi = children.get("#")
            if multi is not None:  # "prefix/#" matches everything below prefix, and prefix itself
                out.extend(multi.subs.items())
        if i == n:
            if node.subs:
                out.extend(node.subs.items())
        elif children:
            single = children.get("+")
            if single is not None:
                if pending is None:
                    pending = []
                pending.append((single, i + 1))
            exact = children.get(levels[i])
            if exact is not None:
                node = exact
                i += 1
                continue
        if not pending:
            return
        node, i = pending.pop()


# ------------------------------------------------------------------------------------ filter algebra
#
# Both questions are about the set of valid topic names a filter matches. A filter constrains each
# level independently (a literal, "+", or nothing past a trailing "#") plus the topic's length, so a
# question about all topics reduces to per-level questions over a handful of representative levels:
# every literal either filter names at that level, plus one fresh level equal to none of them (not
# "$"-prefixed: a filter accepts a "$" first level only by naming it, so a fresh "$" level would be
# accepted by neither). A one-level topic cannot be the empty string (a topic name is at least one
# character), so "" is excluded at level 0 when the length is 1. Lengths beyond
# max(depth)+1 all behave alike, so only lengths 1..max(depth+1, 2) are examined, with prefix
# accumulators keeping the whole check linear in the filters' depth (a SUBSCRIBE filter is peer input).
#
# Placeholders such as "{unit}" are ordinary literal text here. Callers holding templates substitute
# each placeholder by "+" before asking; for filters_intersect that over-approximates every possible
# substitution (and treats two occurrences of one placeholder as independent), so "disjoint" remains
# a proof. For filter_covers substitute "+" only in `specific` (the side that must be covered).


@dataclass(frozen=True, slots=True)
class _Shape:
    levels: tuple[str, ...]  # the filter's levels without a trailing "#"
    multi: bool  # ended in "#": matches any length >= len(levels)
    dollar_blind: bool  # first level is a wildcard: matches no "$" topic

    @staticmethod
    def of(topic_filter: str) -> _Shape:
        if topic_filter.startswith(SHARE_PREFIX):
            raise TopicFilterInvalid(
                "Compare the plain filter of a shared subscription (parse_shared(...).topic_filter).",
                peer_at_fault=False,
            )
        _check_plain_filter(topic_filter)
        levels = tuple(topic_filter.split("/"))
        multi = levels[-1] == "#"
        return _Shape(levels[:-1] if multi else levels, multi, topic_filter[0] in "+#")

    def length_ok(self, length: int) -> bool:
        return length >= len(self.levels) if self.multi else length == len(self.levels)

    def level_ok(self, i: int, level: str) -> bool:
        if i == 0 and self.dollar_blind and level[:1] == "$":
            return False
        return i >= len(self.levels) or self.levels[i] == "+" or self.levels[i] == level


def _representatives(i: int, shapes: tuple[_Shape, _Shape], single_level_topic: bool) -> set[str]:
    literals = {s.levels[i] for s in shapes if i < len(s.levels) and s.levels[i] != "+"}
    fresh = "~"
    while fresh in literals:
        fresh += "~"
    reps = {*literals, fresh}
    if i == 0 and single_level_topic:
        reps.discard("")
    return reps


def _last_distinct_length(x: _Shape, y: _Shape) -> int:
    # Past both filters' levels every further level is unconstrained and the length test no longer
    # changes; length 1 is special (no empty topic), so at least length 2 is always examined.
    return max(len(x.levels) + 1, len(y.levels) + 1, 2)


def filters_intersect(a: str, b: str) -> bool:
    """Is there at least one valid topic name that both plain filters match?

    Exact (sound and complete) under the $ rule and `#` matching its parent level. Raises
    `TopicFilterInvalid` for an invalid or shared filter. See the section comment on placeholders.
    """
    sa, sb = _Shape.of(a), _Shape.of(b)
    shapes = (sa, sb)

    def both(i: int, single: bool) -> bool:
        return any(sa.level_ok(i, x) and sb.level_ok(i, x) for x in _representatives(i, shapes, single))

    if sa.length_ok(1) and sb.length_ok(1) and both(0, single=True):
        return True
    rest_ok = both(0, single=False)  # levels 0..length-1 all satisfiable, for lengths >= 2
    for length in range(2, _last_distinct_length(sa, sb) + 1):
        rest_ok = rest_ok and both(length - 1, single=False)
        if not rest_ok:
            return False  # a longer topic has this level too
        if sa.length_ok(length) and sb.length_ok(length):
            return True
    return False


def filter_covers(general: str, specific: str) -> bool:
    """Is every valid topic name matched by `specific` also matched by `general`?

    Exact under the same rules as `filters_intersect` (e.g. `+/#` does not cover `$SYS/#`, and `/+/#`
    covers `/#` because the one-level topic "" does not exist). Raises `TopicFilterInvalid`.
    """
    sg, ss = _Shape.of(general), _Shape.of(specific)
    shapes = (sg, ss)

    def matchable(i: int, single: bool) -> bool:
        return any(ss.level_ok(i, x) for x in _representatives(i, shapes, single))

    def escapes(i: int, single: bool) -> bool:  # some level `specific` accepts and `general` refuses
        return any(ss.level_ok(i, x) and not sg.level_ok(i, x) for x in _representatives(i, shapes, single))

    # A counterexample is a topic of some length that `specific` matches and `general` does not:
    # every level matchable by `specific`, and either the length or at least one level escaping.
    if ss.length_ok(1) and matchable(0, single=True) and (not sg.length_ok(1) or escapes(0, single=True)):
        return False
    all_matchable = matchable(0, single=False)
    any_escapes = escapes(0, single=False)
    for length in range(2, _last_distinct_length(sg, ss) + 1):
        all_matchable = all_matchable and matchable(length - 1, single=False)
        if not all_matchable:
            break
        any_escapes = any_escapes or escapes(length - 1, single=False)
        if ss.length_ok(length) and (any_escapes or not sg.length_ok(length)):
            return False
    return True
