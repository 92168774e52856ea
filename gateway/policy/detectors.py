"""Detectors: per-subject state that notices a compromised unit, with the time passed in.

Theory of operation. One detector object watches one subject (an identity, or a source address for
handshake failures) for one concern. `observe…(…, now)` records evidence and must stay cheap: several of
them run for every accepted PUBLISH. `fired(now)` answers, at most once per piece of evidence, with a
`Firing` carrying numbers an operator can check; firing also clears the evidence, so the next firing
needs fresh evidence (a flood that goes on fires once per window, never once per packet). What to do
about a firing is not decided here but by the response ladder (responses.py).

Thresholds are reached, not exceeded: a detector with threshold 10 fires at the tenth event.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass, field
from typing import Any

from gateway.policy import detector_rules as cfg
from gateway.policy.rate import SlidingWindowCounter
from pki.names import Identity

__all__ = [
    "CloningDetector",
    "CountDetector",
    "Firing",
    "NetworkDetector",
    "PublishRateDetector",
    "TravelDetector",
    "haversine_km",
    "host_of",
]

EARTH_RADIUS_KM = 6371.0088
_KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180
MAX_FIX_BYTES = 4096  # a GPS fix is ~100 bytes; parsing is bounded so a huge payload costs nothing
_BUCKETS = 10


@dataclass(frozen=True)
class Firing:
    """A detector's finding: who, what, the numbers, and the policy key that set the threshold."""

    detector: str  # "publish_rate"
    subject: Identity | str  # an identity, or "address/<host>"
    reason: str  # "publish_rate_ceiling"
    rule: str  # "detectors/publish_rate/ceiling_per_second"
    evidence: dict[str, float]
    context: dict[str, str] = field(default_factory=dict)  # addresses, topics: what numbers cannot say
    at: float = 0.0


def host_of(address: str) -> str:
    """ "10.0.0.7:40000" → "10.0.0.7"; "[::1]:8883" → "::1"; anything else unchanged."""
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host_of(address))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d
    return ip


class CountDetector:
    """N events within a sliding window: denial bursts, failures, flapping, overreach."""

    __slots__ = ("_counter", "_notes", "detector", "reason", "rule", "subject", "threshold", "window")

    def __init__(
        self, detector: str, subject: Identity | str, threshold: int, window: float, reason: str, rule: str
    ) -> None:
        self.detector, self.subject, self.reason, self.rule = detector, subject, reason, rule
        self.threshold, self.window = threshold, window
        self._counter = SlidingWindowCounter(window, _BUCKETS)
        self._notes: list[str] = []

    def observe(self, now: float, note: str = "") -> None:
        self._counter.add(now)
        if note and note not in self._notes and len(self._notes) < 5:
            self._notes.append(note)  # the first few distinct topics/reasons, for the operator

    def fired(self, now: float) -> Firing | None:
        count = self._counter.count(now)
        if count < self.threshold:
            return None
        evidence = {"count": float(count), "threshold": float(self.threshold), "window": self.window}
        context = {"seen": ", ".join(self._notes)} if self._notes else {}
        self._counter = SlidingWindowCounter(self.window, _BUCKETS)
        self._notes = []
        return Firing(self.detector, self.subject, self.reason, self.rule, evidence, context, now)


class PublishRateDetector:
    """Publish attempts in a short sliding window vs an absolute ceiling and the identity's own baseline.

    The baseline is learnt from whole windows (tumbling, `window` seconds each) kept over
    `baseline_window`; a window in which the detector fired is left out, so a flood does not teach the
    detector that floods are normal. Until a unit has a baseline, `min_per_second` is the bar.
    """

    __slots__ = (
        "_baseline",
        "_floor",
        "_previous_count",
        "_recent",
        "_slot",
        "_slot_count",
        "_slot_tainted",
        "settings",
        "subject",
    )

    def __init__(self, subject: Identity, settings: cfg.PublishRate) -> None:
        self.subject, self.settings = subject, settings
        # The two windows are made at the first publish: every connected unit has this detector,
        # and an idle one would hold ~1 KB of empty buckets (a third of fleetgate's own memory per
        # idle session). Until then both counts are zero, and nothing can fire.
        self._recent: SlidingWindowCounter | None = None
        self._baseline: SlidingWindowCounter | None = None
        self._slot = -1
        self._slot_count = self._previous_count = 0
        self._slot_tainted = False
        self._floor = settings.min_per_second * settings.window  # no firing below this many messages

    def observe(self, now: float, n: int = 1) -> None:
        if self._recent is None:
            s = self.settings
            self._recent = SlidingWindowCounter(s.window, _BUCKETS)
            slots = max(1, min(30, round(s.baseline_window / s.window)))
            self._baseline = SlidingWindowCounter(s.baseline_window, slots)
        self._recent.add(now, n)
        slot = math.floor(now / self.settings.window)
        if slot > self._slot:  # (a late event from an earlier slot just counts in the current one)
            if self._slot_count and not self._slot_tainted:
                assert self._baseline is not None  # made with _recent, above
                self._baseline.add(self._slot * self.settings.window, self._slot_count)
            self._previous_count = self._slot_count if slot == self._slot + 1 else 0
            self._slot, self._slot_count, self._slot_tainted = slot, 0, False
        self._slot_count += n

    def baseline_per_second(self, now: float) -> float:
        # The window being counted now is not in the baseline yet: it spans baseline_window - window.
        s = self.settings
        if self._baseline is None:
            return 0.0
        return self._baseline.count(now) / (s.baseline_window - s.window)

    def fired(self, now: float) -> Firing | None:
        # O(1) first: a sliding window lies within this tumbling slot and the one before, so if those
        # two hold fewer messages than the floor, nothing can fire (true for every normal unit).
        if self._previous_count + self._slot_count < self._floor or self._recent is None:
            return None
        s = self.settings
        count = self._recent.count(now)
        rate = count / s.window
        baseline = self.baseline_per_second(now)
        bar = max(s.min_per_second, s.spike_factor * baseline)
        if rate >= s.ceiling_per_second:
            reason, key = "publish_rate_ceiling", "ceiling_per_second"
        elif rate >= bar:
            reason, key = "publish_rate_spike", "spike_factor" if bar > s.min_per_second else "min_per_second"
        else:
            return None
        self._recent = SlidingWindowCounter(s.window, _BUCKETS)
        self._slot_tainted = True
        evidence = {
            "messages": float(count),
            "window": s.window,
            "per_second": round(rate, 3),
            "baseline_per_second": round(baseline, 3),
            "spike_bar_per_second": round(bar, 3),
            "ceiling_per_second": s.ceiling_per_second,
        }
        return Firing("publish_rate", self.subject, reason, f"detectors/publish_rate/{key}", evidence, at=now)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a spherical Earth (metres of error over hundreds of km: plenty here)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dlat, dlon = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dlat / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _number(body: Any, path: tuple[str, ...]) -> float | None:
    for part in path:
        if type(body) is not dict:
            return None
        body = body.get(part)
    kind = type(body)  # exact types: bool is an int subclass, and no subclass comes out of json.loads
    if (kind is not float and kind is not int) or not math.isfinite(body):
        return None
    return float(body)


Fix = tuple[float, float, float]  # lat, lon, seconds


class TravelDetector:
    """Consecutive GPS fixes of one unit, kept across reconnects, against a top speed.

    Speed is (distance - slack) / time between the fixes' own timestamps, so a unit uploading fixes it
    buffered offline is judged by when they were taken, not when they arrived. A jump shorter than
    `glitch_km` must be confirmed by the next fix before it counts: a multipath glitch comes back to the
    track, a real jump (a clone, a spoofer, a unit moved on a trailer with its modem off) stays away. No
    GPS error is hundreds of kilometres, so longer jumps fire at once. Fixes that cannot be read (not
    JSON, fields missing or out of range, stamped in the future) are counted, never raised.
    """

    __slots__ = (
        "_last",
        "_paths",
        "_pending",
        "_suspect",
        "fixes",
        "glitches",
        "malformed",
        "out_of_order",
        "settings",
        "subject",
        "topic",
    )

    def __init__(self, subject: Identity, settings: cfg.ImpossibleTravel) -> None:
        self.subject, self.settings = subject, settings
        self.topic = settings.topic.replace("{id}", subject.id)  # the observer compares whole strings
        names = settings.fields
        stamp = tuple(names.timestamp.split(".")) if names.timestamp is not None else None
        self._paths = (tuple(names.lat.split(".")), tuple(names.lon.split(".")), stamp)
        self._last: Fix | None = None  # the last fix believed
        self._suspect: Fix | None = None  # a short impossible jump, waiting for the next fix
        self._pending: Firing | None = None
        self.fixes = self.malformed = self.out_of_order = self.glitches = 0

    def parse(self, payload: bytes, now: float) -> Fix | None:
        if len(payload) > MAX_FIX_BYTES or payload.lstrip()[:1] != b"{":
            return None  # a fix is a JSON object: anything else is malformed without asking json
        try:
            body = json.loads(payload.decode())  # decoding first skips json's encoding sniffing
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        lat_path, lon_path, stamp_path = self._paths
        lat, lon = _number(body, lat_path), _number(body, lon_path)
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            return None
        if stamp_path is None:
            return lat, lon, now
        stamp = _number(body, stamp_path)
        if stamp is None:
            return None
        seconds = stamp / 1000 if self.settings.timestamp_unit == "ms" else stamp
        return None if seconds > now + self.settings.max_clock_skew else (lat, lon, seconds)

    def observe(self, payload: bytes, now: float) -> None:
        fix = self.parse(payload, now)
        if fix is None:
            self.malformed += 1
            return
        self.fixes += 1
        last, suspect = self._last, self._suspect
        if last is None:
            self._last = fix
            return
        km, speed = self._speed(last, fix)
        impossible = speed >= self.settings.max_speed_kmh
        if fix[2] < last[2]:  # a late fix (a QoS 1 retry): judged if far off, never adopted
            self.out_of_order += 1
            if impossible and km >= self.settings.glitch_km:
                self._fire(last, fix, now, confirmed=False)
            return
        if suspect is not None:
            self._suspect = None
            if impossible:  # it stayed away from the track: the jump was real
                self._fire(last, suspect, now, confirmed=True)
            else:
                self.glitches += 1  # back on the track: the suspect was a glitch
        elif impossible and km < self.settings.glitch_km:
            self._suspect = fix
            return
        elif impossible:
            self._fire(last, fix, now, confirmed=False)
        self._last = fix

    def _speed(self, a: Fix, b: Fix) -> tuple[float, float]:
        # Along the meridian, then along a parallel, is never shorter than the great circle: when even
        # that stays within the slack (consecutive fixes of any real truck), no trigonometry is needed.
        bound = _KM_PER_DEGREE * (abs(b[0] - a[0]) + abs(b[1] - a[1]))
        if bound <= self.settings.slack_km:
            return bound, 0.0
        km = haversine_km(a[0], a[1], b[0], b[1])
        seconds = max(abs(b[2] - a[2]), 1.0)  # same-second fixes: a jump is still a jump
        return km, max(0.0, km - self.settings.slack_km) / seconds * 3600.0

    def _fire(self, a: Fix, b: Fix, now: float, confirmed: bool) -> None:
        km, speed = self._speed(a, b)
        if self._pending is not None and self._pending.evidence["speed_kmh"] >= speed:
            return  # one firing per evaluation, with the worst pair
        evidence = {
            "distance_km": round(km, 3),
            "seconds": round(max(abs(b[2] - a[2]), 1.0), 3),
            "speed_kmh": round(speed, 1),
            "max_speed_kmh": self.settings.max_speed_kmh,
            "from_lat": a[0],
            "from_lon": a[1],
            "to_lat": b[0],
            "to_lon": b[1],
            "confirmed_by_next_fix": float(confirmed),
            "glitches": float(self.glitches),
            "malformed_fixes": float(self.malformed),
        }
        rule = "detectors/impossible_travel/max_speed_kmh"
        self._pending = Firing("impossible_travel", self.subject, "impossible_travel", rule, evidence, at=now)

    @property
    def last_fix(self) -> Fix | None:
        """The last fix believed (another node of a cluster adopts it when the unit moves there)."""
        return self._last

    def adopt(self, fix: Fix, now: float) -> None:
        """The last fix another node believed for this unit, which left it. Newer than ours (or we
        have none): it is ours now. Older than the fixes we already have (the unit published here
        before the other node's fix arrived): the jump from it to our first is judged as a late fix
        is, and fires if far."""
        last = self._last
        if last is None or fix[2] >= last[2]:
            self._last = fix
            return
        km, speed = self._speed(fix, last)
        if speed >= self.settings.max_speed_kmh and km >= self.settings.glitch_km:
            self._fire(fix, last, now, confirmed=False)

    def fired(self, now: float) -> Firing | None:
        pending, self._pending = self._pending, None
        return pending


class NetworkDetector:
    """Where an identity connects from: inside its kind's allowed networks, and not hopping networks."""

    __slots__ = ("_allowed", "_last_net", "_last_seen", "_pending", "settings", "subject", "unreadable")

    def __init__(self, subject: Identity, settings: cfg.SourceNetwork) -> None:
        self.subject, self.settings = subject, settings
        self._allowed = settings.allowed.get(subject.kind)
        self._last_net: str | None = None
        self._last_seen = -math.inf
        self._pending: Firing | None = None
        self.unreadable = 0

    def _network(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        bits = self.settings.change_prefix["ipv4" if ip.version == 4 else "ipv6"]
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))

    def observe_connect(self, address: str, now: float) -> None:
        ip = _ip(address)
        if ip is None:
            self.unreadable += 1  # the lab listener or a unix socket: nothing to judge
            return
        net = self._network(ip)
        s = self.settings
        if self._allowed is not None and not any(ip in allowed for allowed in self._allowed):
            evidence = {"allowed_networks": float(len(self._allowed))}
            rule = f"detectors/source_network/allowed/{self.subject.kind}"
            context = {"address": address}
            self._pending = Firing(
                "source_network", self.subject, "outside_allowed_networks", rule, evidence, context, now
            )
        elif self._last_net not in (None, net) and now - self._last_seen <= s.change_window:
            gap = round(now - self._last_seen, 3)
            evidence = {"seconds_since_last": gap, "change_window": s.change_window}
            context = {"address": address, "network": net, "previous_network": str(self._last_net)}
            rule = "detectors/source_network/change_window"
            self._pending = Firing(
                "source_network", self.subject, "network_changed", rule, evidence, context, now
            )
        self._last_net, self._last_seen = net, now

    def observe_seen(self, now: float) -> None:
        """The identity was still there (e.g. it disconnected now): a change is measured from here."""
        self._last_seen = now

    def fired(self, now: float) -> Firing | None:
        pending, self._pending = self._pending, None
        return pending


class CloningDetector:
    """One identity, two devices: its session taken back and forth.

    Two signs, either fires: a host that lost the session taking it back from another host within the
    window (a roaming truck moves on, A→B→C; a clone fights back, A→B→A), and many takeovers in the
    window from wherever (two devices behind one NAT share an address; one device takes over its own
    session only when its old connection died unnoticed, which is rare).
    """

    __slots__ = ("_displaced", "_holder", "_returns", "_takeovers", "settings", "subject")

    def __init__(self, subject: Identity, settings: cfg.Cloning) -> None:
        self.subject, self.settings = subject, settings
        self._holder = ""  # the host that took the session last
        self._displaced: dict[str, float] = {}  # host → when it lost the session (bounded below)
        self._returns: list[float] = []
        self._takeovers: list[float] = []

    def observe_takeover(self, old_address: str, new_address: str, now: float) -> None:
        old, new = host_of(old_address), host_of(new_address)
        horizon = now - self.settings.window
        self._takeovers = [*[t for t in self._takeovers if t > horizon][-63:], now]
        self._holder = new
        if old == new:
            return
        if self._displaced.get(new, -math.inf) > horizon:
            self._returns = [*[t for t in self._returns if t > horizon][-63:], now]
        self._displaced = {h: t for h, t in self._displaced.items() if t > horizon and h != new}
        if len(self._displaced) < 16:  # a clone army is already obvious; memory stays bounded
            self._displaced[old] = now

    def fired(self, now: float) -> Firing | None:
        s = self.settings
        horizon = now - s.window
        returns = sum(1 for t in self._returns if t > horizon)
        takeovers = sum(1 for t in self._takeovers if t > horizon)
        if returns >= s.threshold:
            key = "threshold"
        elif takeovers >= s.takeovers:
            key = "takeovers"
        else:
            return None
        self._returns, self._takeovers = [], []
        hosts = sorted({*self._displaced, self._holder})
        evidence = {
            "returns": float(returns),
            "takeovers": float(takeovers),
            "hosts": float(len(hosts)),
            "window": s.window,
        }
        context = {"hosts": ", ".join(hosts), "holder": self._holder}
        rule = f"detectors/cloning/{key}"
        return Firing("cloning", self.subject, "session_contested", rule, evidence, context, now)
