"""MQTT topics as NATS subjects, for the cluster's backbone (docs/cluster.md, part 2). Pure.

One MQTT level is one NATS token, escaped so that no token is empty or holds what NATS reserves:

- `.` (NATS's level separator), whitespace and control characters (not allowed in a subject), `*`
  and `>` (NATS's wildcards), `%` (our escape character) and every byte outside printable ASCII are
  written `%XX` (the UTF-8 bytes in upper-case hex), so a token is printable ASCII without them;
- an empty level (a leading or trailing `/`, or `//`) is the token `%` alone, which no escaped
  non-empty level can be (a `%` there is always followed by two hex digits).

Every subject starts with a prefix (`fleetgate` by default, several clusters may share one NATS) and
then `m` for ordinary topics or `d` for topics whose first level starts with `$`: MQTT's wildcards at
the first level never match a `$` topic (§4.7.2), NATS's do, so the two live in separate subtrees.

nats-server's own MQTT support maps differently (`.` becomes `//`, an empty level `/`, a space is
refused): readable for NATS users, but `a.b` and `a//b` collide and some topics cannot be carried.
Here nothing but fleetgate nodes read these subjects, so the mapping is chosen to be total and
reversible for every valid topic name instead.

Filters: `+` is `*`; `#` is `>`, except that `a/#` also matches `a` itself in MQTT and NATS's `a.>`
does not, so a filter ending in `/#` maps to two NATS filters (the parent and the parent's `>`).
The test (tests/broker/test_subjects.py) checks that a filter matches a topic in MQTT terms iff one of
its NATS filters matches the topic's subject in NATS terms.
"""

from __future__ import annotations

import re

DEFAULT_PREFIX = "fleetgate"
_EMPTY = "%"
# Printable ASCII except what NATS reserves and our escape character: kept as they are.
_PLAIN = frozenset(chr(c) for c in range(0x21, 0x7F)) - {".", "*", ">", "%"}
# A topic whose every level is non-empty and `_PLAIN` alone (nearly every real topic): its subject
# is the topic with `/` written `.`, made without looking at each level. The class is 0x21-0x7E
# without `%` (0x25), `*` (0x2A), `.` (0x2E), `/` (0x2F, the separator) and `>` (0x3E).
_PLAIN_TOPIC = re.compile(r"[!-$&-)+-\-0-=?-~]+(?:/[!-$&-)+-\-0-=?-~]+)*")
_HEX = "0123456789ABCDEF"


def _escape(level: str) -> str:
    if not level:
        return _EMPTY
    if all(ch in _PLAIN for ch in level):  # nearly every real level: no copy made
        return level
    out: list[str] = []
    for ch in level:
        if ch in _PLAIN:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _unescape(token: str) -> str:
    if token == _EMPTY:
        return ""
    if "%" not in token:
        return token
    raw = bytearray()
    i = 0
    n = len(token)
    while i < n:
        ch = token[i]
        if ch == "%":
            pair = token[i + 1 : i + 3]
            if len(pair) != 2 or any(c not in _HEX for c in pair):
                raise ValueError(f"bad escape in NATS token {token!r}")
            raw.append(int(pair, 16))
            i += 3
        else:
            raw.extend(ch.encode("ascii"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")


def _root(first_level: str, prefix: str) -> str:
    return f"{prefix}.d" if first_level.startswith("$") else f"{prefix}.m"


def topic_to_subject(topic: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The subject a (valid) MQTT topic name is published on."""
    if _PLAIN_TOPIC.fullmatch(topic) is not None:
        return _root(topic, prefix) + "." + topic.replace("/", ".")
    levels = topic.split("/")
    return _root(levels[0], prefix) + "." + ".".join([_escape(level) for level in levels])


def subject_to_topic(subject: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The topic name a subject made by `topic_to_subject` stands for; ValueError for anything else."""
    head = prefix + "."
    if not subject.startswith(head) or subject[len(head) : len(head) + 2] not in ("m.", "d."):
        raise ValueError(f"{subject!r} is not a fleetgate topic subject under {prefix!r}")
    body = subject[len(head) + 2 :]
    if "%" not in body:  # no escaped character and no empty level: every token is its level
        topic = body.replace(".", "/")
    else:
        topic = "/".join(_unescape(token) for token in body.split("."))
    if (subject[len(head)] == "d") != topic.startswith("$"):
        raise ValueError(f"{subject!r} is in the wrong subtree for its topic")
    return topic


def filter_to_subjects(plain_filter: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, ...]:
    """The NATS subject filters whose union matches exactly the subjects of the topic names a (valid,
    unshared) MQTT filter matches: one, or two for a filter ending in `/#`."""
    levels = plain_filter.split("/")
    root = _root(levels[0], prefix)  # a wildcard first level never matches a `$` topic (§4.7.2)
    tokens = ["*" if lv == "+" else ">" if lv == "#" else _escape(lv) for lv in levels]
    whole = root + "." + ".".join(tokens)
    if len(levels) > 1 and levels[-1] == "#":
        return (root + "." + ".".join(tokens[:-1]), whole)  # "a/#" matches "a" too
    return (whole,)
