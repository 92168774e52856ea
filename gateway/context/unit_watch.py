"""What the console shows of each unit's traffic: its last messages, last GPS fix, control liveness.

A publish observer (gateway/app/observers.py) like the flow feed: it sees every client PUBLISH the
policy accepted, in the middle of routing, so it only appends to bounded structures and parses
nothing there. Per unit (the `{unit}` level of `fleet/{unit}/...`):

- the last `per_unit` messages on its topics (topic, time, size, the first `max_payload` bytes), in a
  deque, so memory is bounded by units x per_unit x max_payload (defaults: 10 x 512 B per unit);
- the last GPS fix from `fleet/{unit}/telemetry/gps` (`lat`, `lon` numbers in a JSON object), parsed
  when someone asks (`UnitTraffic.fix`), not on the hot path: the raw fixes since the last question
  wait in a short list (at most `UNREAD_FIXES`, each at most `MAX_PAYLOAD` bytes; a longer one is
  parsed at once; one that does not start with `{` is no fix and is dropped), and when it is full
  the newest good one is kept and the rest dropped. A fix that cannot be read never replaces a good
  one, whenever it is parsed;
- when a control message last went to or from it (`fleet/{unit}/control/...`), and which way:
  the console shows this as the control channel's liveness, which quarantine must never touch.

Units are keyed by the topic, not the publisher: a dispatch service's control message to TRK-1 is
TRK-1's. Only units the registry knows are kept (`known` decides), so a stranger's topics cannot grow
the map. Redaction for readers who may not see PII happens when the console asks (`redacted`), not
here: the buffer keeps what was sent, as briefly as the deque holds it.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gateway.policy.data_classes import PII, DataClasses, normal_key
from gateway.policy.peer import Peer

PER_UNIT = 10
MAX_PAYLOAD = 512
REDACTED = "[redacted: pii]"
UNREAD_FIXES = 8  # raw GPS payloads kept per unit until the fix is asked for (or this many arrive)
UNKNOWN_RECHECK = 10.0  # seconds before an unknown unit id is looked up again
MAX_UNKNOWN = 10_000


class Seen(NamedTuple):
    """One message as the unit page lists it (`UnitTraffic.messages`)."""

    topic: str
    at: float  # epoch seconds
    size: int
    payload: bytes  # at most MAX_PAYLOAD bytes of it
    sender: str  # the publisher, e.g. "service/dispatch" ("lab": an in-process lab client)


# What the buffer holds per message: (topic, at, size, payload, sender kind, sender id), a plain tuple
# of strings, numbers and bytes that already exist, so nothing is made for it but the tuple. The
# garbage collector stops tracking such a tuple the first time it looks at it, so a buffer that turns
# over every message does not push objects into the old generation by the thousand a second: with a
# NamedTuple, or an Identity inside, every buffered message was tracked, lived past two young
# collections, and made a full collection (400 ms at 10,000 units) run every few seconds.
_Kept = tuple[str, float, int, bytes, str, str]


def _sender(kind: str, ident: str) -> str:
    """How the unit page names a publisher: "service/dispatch", or "lab" (an in-process lab client)."""
    return f"{kind}/{ident}" if ident else kind


@dataclass(frozen=True, slots=True)
class Fix:
    lat: float
    lon: float
    at: float


@dataclass(slots=True)
class UnitTraffic:
    kept: deque[_Kept]
    control_at: float | None = None
    control_topic: str = ""
    control_sender: str = ""
    last_fix: Fix | None = None  # the last good fix parsed so far: read `fix`, which parses the unread
    unread: list[tuple[bytes, float]] | None = None  # GPS payloads not parsed yet, oldest first

    @property
    def messages(self) -> list[Seen]:
        """The last messages, oldest first."""
        return [
            Seen(topic, at, size, payload, _sender(kind, ident))
            for topic, at, size, payload, kind, ident in self.kept
        ]

    @property
    def fix(self) -> Fix | None:
        """The last good GPS fix, after parsing what arrived since the last question."""
        if self.unread:
            self.settle()
        return self.last_fix

    def gps(self, payload: bytes, now: float, max_payload: int) -> None:
        """Keep a GPS payload to parse when asked; a long one (rare) is parsed now, not kept, and one
        that is not a JSON object (binary telemetry) cannot be a fix and is not kept either."""
        if payload[:1] != b"{" and payload.lstrip()[:1] != b"{":
            return
        if len(payload) > max_payload:
            if self.unread:
                self.settle()
            self.last_fix = parse_fix(payload, now) or self.last_fix
            return
        unread = self.unread
        if unread is None:
            self.unread = unread = []
        unread.append((payload, now))
        if len(unread) >= UNREAD_FIXES:
            self.settle()

    def settle(self) -> None:
        """Parse the unread fixes newest first: the first good one is the last good fix."""
        unread = self.unread or []
        for payload, at in reversed(unread):
            fix = parse_fix(payload, at)
            if fix is not None:
                self.last_fix = fix
                break
        unread.clear()


@dataclass
class UnitWatch:
    known: Callable[[str], bool]  # whether the registry knows this unit id
    per_unit: int = PER_UNIT
    max_payload: int = MAX_PAYLOAD
    units: dict[str, UnitTraffic] = field(default_factory=dict)
    # Unit ids the registry did not know, and when it was asked: a service publishing to unknown
    # units costs one registry lookup per id per UNKNOWN_RECHECK seconds, not one per message.
    unknown: dict[str, float] = field(default_factory=dict)

    def observe(self, peer: Peer, topic: str, payload: bytes, now: float) -> None:
        levels = topic.split("/", 3)
        if len(levels) < 3 or levels[0] != "fleet":
            return
        unit = levels[1]
        traffic = self.units.get(unit)
        if traffic is None:
            asked = self.unknown.get(unit)
            if asked is not None and now - asked < UNKNOWN_RECHECK:
                return
            if not self.known(unit):
                if len(self.unknown) >= MAX_UNKNOWN:
                    self.unknown.clear()
                self.unknown[unit] = now
                return
            self.unknown.pop(unit, None)
            traffic = self.units[unit] = UnitTraffic(deque(maxlen=self.per_unit))
        identity = peer.identity
        kind, ident = (identity.kind, identity.id) if identity is not None else ("lab", "")
        traffic.kept.append((topic, now, len(payload), payload[: self.max_payload], kind, ident))
        if levels[2] == "control":
            traffic.control_at, traffic.control_topic, traffic.control_sender = (
                now,
                topic,
                _sender(kind, ident),
            )
        elif (
            len(levels) == 4 and levels[3] == "gps" and levels[2] == "telemetry"
        ):  # fleet/{unit}/telemetry/gps
            traffic.gps(payload, now, self.max_payload)

    def traffic(self, unit: str) -> UnitTraffic | None:
        return self.units.get(unit)

    def fixes(self) -> dict[str, Fix]:
        found = {unit: t.fix for unit, t in self.units.items()}
        return {unit: fix for unit, fix in found.items() if fix is not None}


def parse_fix(payload: bytes, now: float) -> Fix | None:
    """A GPS fix from `{"lat": .., "lon": ..}`; anything else (or an impossible position) is ignored."""
    if len(payload) > 4096:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    lat, lon = obj.get("lat"), obj.get("lon")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lat, lon)):
        return None
    assert isinstance(lat, int | float) and isinstance(lon, int | float)
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return Fix(float(lat), float(lon), now)


def redacted(topic: str, payload: bytes, classes: DataClasses) -> str:
    """The payload as text for a reader without the `pii` class: PII fields (at any depth, by the
    class's names) become REDACTED, and a topic that is PII as a whole shows nothing."""
    if PII in classes.topic_classes(topic):
        return REDACTED
    pii = classes.classes.get(PII)
    names = {normal_key(p.rsplit(".", 1)[-1]) for p in pii.fields} if pii is not None else set()
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        # Not JSON: nothing to walk, so nothing is known to be safe.
        return REDACTED if names else payload.decode("utf-8", "replace")
    return json.dumps(_scrub(obj, names), ensure_ascii=False)


def _scrub(value: Any, names: Iterable[str] | set[str]) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if normal_key(str(k)) in names else _scrub(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, names) for v in value]
    return value
