"""The `detectors:` section of policy.yaml: what each detector watches, its thresholds and its responses.

One block per detector, each with the same response keys:

    enabled   true/false (default true)
    kinds     identity kinds it watches (unit, operator, service, partner)
    respond   the ladder: a list of alert | throttle | quarantine | disconnect | revoke
    cooldown  seconds; a firing within this long of the previous one climbs one step of the ladder,
              and the same response is never repeated within it (see gateway/policy/responses.py)
    throttle  {factor, seconds}: what the `throttle` step does (its rate times factor, for that long)

A missing section, block or key takes the default below; the defaults are tuned to fire zero times on a
normal fleet (GPS every second, engine every 5 s, diagnostics every 30 to 60 s, speeds ≤ 130 km/h,
reconnects with backoff). Parsing is as strict as the rest of the file: an unknown key, a wrong type or
an impossible combination is a `PolicyError` naming the key path.

The parsers build on the shared cursor and validators in schema.py; rules.py calls `parse_detectors` for
the section and keeps the result in `Policy.detectors`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.mqtt.errors import TopicNameInvalid
from gateway.mqtt.topics import validate_topic_name
from gateway.policy.schema import At, boolean, kind, positive

__all__ = [
    "ACTIONS",
    "KINDS",
    "QUARANTINE_KINDS",
    "Cloning",
    "ConnectFlapping",
    "DenialBurst",
    "DetectorSettings",
    "GpsFields",
    "HandshakeFailures",
    "ImpossibleTravel",
    "Network",
    "Plan",
    "PublishRate",
    "SourceNetwork",
    "SubscriptionOverreach",
    "parse_detectors",
]

ACTIONS = ("alert", "throttle", "quarantine", "disconnect", "revoke")
KINDS = frozenset({"unit", "operator", "service", "partner"})
# Quarantine takes a unit id (Operations.quarantine) and only units have a quarantine profile.
QUARANTINE_KINDS = frozenset({"unit"})
_ALL = KINDS
_UNITS = frozenset({"unit"})
_DEFAULT_DENIAL_REASONS = frozenset(
    {
        "topic_outside_namespace",
        "topic_not_granted",
        "filter_not_granted",
        "wildcard_overreach",
        "reserved_topic",
        "invalid_filter",
    }
)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Plan:
    """The response side of a detector: its ladder, cooldown and what a throttle step does."""

    respond: tuple[str, ...]
    cooldown: float = 60.0
    throttle_factor: float = 0.1  # a throttled identity keeps 10 % of its role's message rate...
    throttle_seconds: float = 300.0  # ...for five minutes (a unit needs ~1.3/s of its 20/s: GPS still flows)


# ---------------------------------------------------------------------------------------- parsers


def _number(at: At, value: Any) -> float:
    return float(positive(at, value, whole=False))


def _count(at: At, value: Any) -> int:
    return int(positive(at, value, whole=True))


def _factor(at: At, value: Any) -> float:
    number = float(positive(at, value, whole=False))
    if number <= 1:
        at.fail(f"must be above 1 (a multiple of the baseline), not {value!r}")
    return number


def _non_negative(at: At, value: Any) -> float:
    if value == 0 and not isinstance(value, bool):
        return 0.0
    return float(positive(at, value, whole=False))


def _kinds(at: At, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value:
        names = ", ".join(sorted(KINDS))
        at.fail(f"must be a non-empty list of identity kinds ({names}), not {kind(value)}")
    for i, item in enumerate(value):
        if item not in KINDS:
            at.index(i).fail(f"{item!r} is not an identity kind; use one of {', '.join(sorted(KINDS))}")
    return frozenset(value)


def _reasons(at: At, value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        at.fail(f"must be a non-empty list of denial reasons such as topic_not_granted, not {kind(value)}")
    return frozenset(value)


def _ladder(at: At, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        at.fail(f"must be a non-empty list of responses ({', '.join(ACTIONS)}), not {kind(value)}")
    for i, item in enumerate(value):
        if item not in ACTIONS:
            at.index(i).fail(f"{item!r} is not a response; use one of {', '.join(ACTIONS)}")
    return tuple(value)


def _throttle(at: At, value: Any) -> tuple[float, float]:
    body = at.mapping(value, allowed=frozenset({"factor", "seconds"}))
    factor = float(positive(at.key("factor"), body.get("factor", 0.1), whole=False))
    if factor >= 1:
        at.key("factor").fail(f"must be below 1 (the share of the rate a sender keeps), not {factor:g}")
    return factor, _number(at.key("seconds"), body.get("seconds", 300))


def _gps_topic(at: At, value: Any) -> str:
    if not isinstance(value, str):
        at.fail(f"must be a topic name with {{id}} as one level, not {kind(value)}")
    levels = value.split("/")
    if levels.count("{id}") != 1 or value.count("{") != 1 or value.count("}") != 1:
        at.fail(f"{value!r} must contain {{id}} exactly once, as a whole level (fleet/{{id}}/telemetry/gps)")
    try:
        validate_topic_name(value.replace("{id}", "x"))
    except TopicNameInvalid as exc:
        at.fail(f"{value!r} is not a topic name (no wildcards): {exc}")
    return value


@dataclass(frozen=True, slots=True)
class GpsFields:
    """Where a GPS fix keeps its numbers: JSON keys, dotted for nesting (`pos.lat`)."""

    lat: str = "lat"
    lon: str = "lon"
    timestamp: str | None = "ts"  # None: use the time the gateway received the fix


def _gps_fields(at: At, value: Any) -> GpsFields:
    body = at.mapping(value, allowed=frozenset({"lat", "lon", "timestamp"}), required=("lat", "lon"))
    for name in ("lat", "lon"):
        if not isinstance(body[name], str) or not body[name]:
            at.key(name).fail(f"must be the JSON field name holding the {name}, not {kind(body[name])}")
    stamp = body.get("timestamp", "ts")
    if stamp is not None and (not isinstance(stamp, str) or not stamp):
        problem = f"must be a JSON field name, or null for the receive time, not {kind(stamp)}"
        at.key("timestamp").fail(problem)
    return GpsFields(body["lat"], body["lon"], stamp)


def _timestamp_unit(at: At, value: Any) -> str:
    if value not in ("s", "ms"):
        at.fail(f"must be s (seconds since the epoch) or ms (milliseconds), not {kind(value)}")
    return str(value)


def _networks(at: At, value: Any) -> Mapping[str, tuple[Network, ...]]:
    body = at.mapping(value if value is not None else {}, allowed=KINDS)
    allowed: dict[str, tuple[Network, ...]] = {}
    for identity_kind, items in body.items():
        where = at.key(identity_kind)
        if not isinstance(items, list) or not items:
            where.fail(f"must be a non-empty list of networks such as 10.0.0.0/8, not {kind(items)}")
        nets = []
        for i, item in enumerate(items):
            try:
                nets.append(ipaddress.ip_network(str(item), strict=True))
            except ValueError as exc:
                where.index(i).fail(f"{item!r} is not a network in CIDR notation ({exc})")
        allowed[identity_kind] = tuple(nets)
    return allowed


def _prefix(at: At, value: Any) -> Mapping[str, int]:
    body = at.mapping(value, allowed=frozenset({"ipv4", "ipv6"}))
    out = {"ipv4": 16, "ipv6": 48}
    for family, bits in (("ipv4", 32), ("ipv6", 128)):
        if family in body:
            length = _count(at.key(family), body[family])
            if length > bits:
                at.key(family).fail(f"a prefix length is at most {bits}, not {length}")
            out[family] = length
    return out


# ------------------------------------------------------------------------------------- detectors
#
# Defaults, against a normal unit (GPS 1/s, engine 1/5 s, fuel 1/30 s, diag 1/30 s: ~1.3 messages/s,
# at most ~15 in any 10 s): the rate floor (35/s) and ceiling (60/s) leave a factor of 25 of headroom.
# The floor also sits above what the default unit role permits in one window (20/s sustained plus its
# 100-message burst over 10 s: 30/s), so only traffic the rate limit refuses can fire; rules.py lints
# the relation for whatever roles and thresholds a policy sets.


@dataclass(frozen=True, slots=True)
class PublishRate:
    """Messages an identity tries to publish (accepted + refused by a rate limit) vs its own past."""

    enabled: bool = True
    kinds: frozenset[str] = _UNITS
    window: float = 10.0  # the sliding window a spike is measured over
    baseline_window: float = 300.0  # the unit's own normal rate is learnt over this long
    spike_factor: float = 10.0  # a spike is this many times the baseline rate...
    # ...and at least this: a new or idle unit has no baseline, and a unit whose connection stalled for a
    # minute delivers ~80 queued messages at once when it recovers (TCP keeps them; that is not a flood).
    # Above the unit role's permitted rate, burst included (see the note above).
    min_per_second: float = 35.0
    ceiling_per_second: float = 60.0  # never normal, whatever the baseline
    plan: Plan = Plan(("alert", "throttle", "quarantine"))


@dataclass(frozen=True, slots=True)
class DenialBurst:
    """Denied publishes and subscribes (authorization denials, not rate limits or quarantine drops)."""

    enabled: bool = True
    kinds: frozenset[str] = _ALL
    threshold: int = 10
    window: float = 30.0
    reasons: frozenset[str] = _DEFAULT_DENIAL_REASONS
    plan: Plan = Plan(("alert", "disconnect"))


@dataclass(frozen=True, slots=True)
class HandshakeFailures:
    """Refused TLS admissions and CONNECTs, per identity and per source address (address: alert only)."""

    enabled: bool = True
    kinds: frozenset[str] = _ALL
    per_identity: int = 5
    per_address: int = 20
    window: float = 60.0
    plan: Plan = Plan(("alert",))


@dataclass(frozen=True, slots=True)
class ConnectFlapping:
    """Accepted connects of one identity (each reconnect is a disconnect and a connect)."""

    enabled: bool = True
    kinds: frozenset[str] = _ALL
    threshold: int = 10
    window: float = 60.0
    # Alert only: flapping is a rate of reconnects (a truck in bad coverage), and a disconnect would only
    # add one more, cutting the unit's control channel on the way.
    plan: Plan = Plan(("alert",))


@dataclass(frozen=True, slots=True)
class ImpossibleTravel:
    """Consecutive GPS fixes (also across a reconnect) implying a speed no truck reaches."""

    enabled: bool = True
    kinds: frozenset[str] = _UNITS
    max_speed_kmh: float = 250.0
    # GPS error: a fix may be off by tens of metres (more under bridges); jumps within the slack are free.
    slack_km: float = 1.0
    # A jump shorter than this counts only if the next fix confirms it (a glitch comes back; a clone or a
    # spoofed position stays); longer jumps fire at once, since no GPS error is that large.
    glitch_km: float = 20.0
    topic: str = "fleet/{id}/telemetry/gps"
    fields: GpsFields = GpsFields()
    timestamp_unit: str = "s"
    # A fix stamped further than this in the future is counted as malformed (it would stretch time).
    max_clock_skew: float = 300.0
    plan: Plan = Plan(("quarantine",))


_PRIVATE = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")


@dataclass(frozen=True, slots=True)
class SourceNetwork:
    """Connections from outside a kind's allowed networks, or from a new network moments after the last."""

    enabled: bool = True
    kinds: frozenset[str] = _ALL
    # Per kind; a kind not listed may connect from anywhere. Default: units come through private ranges
    # (the carrier's private APN / VPN, CGNAT), the lab on loopback.
    allowed: Mapping[str, tuple[Network, ...]] = field(
        default_factory=lambda: {"unit": tuple(ipaddress.ip_network(n) for n in _PRIVATE)}
    )
    change_window: float = 60.0  # 0: do not watch for changes
    # Two addresses are on the same network when they share this prefix (a carrier's pool, roughly).
    change_prefix: Mapping[str, int] = field(default_factory=lambda: {"ipv4": 16, "ipv6": 48})
    plan: Plan = Plan(("alert",))


@dataclass(frozen=True, slots=True)
class SubscriptionOverreach:
    """Refused wildcard subscriptions reaching beyond the role's grants (`#`, fleet/+/...)."""

    enabled: bool = True
    kinds: frozenset[str] = _ALL
    threshold: int = 1
    window: float = 300.0
    plan: Plan = Plan(("alert", "disconnect"))


@dataclass(frozen=True, slots=True)
class Cloning:
    """One identity's session taken over back and forth between two hosts (two devices, one key)."""

    enabled: bool = True
    kinds: frozenset[str] = _UNITS
    # A displaced host taking the session back counts once. A roaming truck whose half-open connection
    # is taken over from a new address (A→B, B→C) never comes back, so it does not count.
    threshold: int = 1
    # ...and this many takeovers in the window, from any address, count too (clones behind one NAT).
    takeovers: int = 3
    window: float = 300.0
    plan: Plan = Plan(("alert", "quarantine"))


DetectorConfig = (
    PublishRate
    | DenialBurst
    | HandshakeFailures
    | ConnectFlapping
    | ImpossibleTravel
    | SourceNetwork
    | SubscriptionOverreach
    | Cloning
)

_DETECTORS: dict[str, type[Any]] = {
    "publish_rate": PublishRate,
    "denial_burst": DenialBurst,
    "handshake_failures": HandshakeFailures,
    "connect_flapping": ConnectFlapping,
    "impossible_travel": ImpossibleTravel,
    "source_network": SourceNetwork,
    "subscription_overreach": SubscriptionOverreach,
    "cloning": Cloning,
}
_PLAN_KEYS = frozenset({"respond", "cooldown", "throttle"})
_Parser = Callable[[At, Any], Any]
_COMMON: dict[str, _Parser] = {"enabled": boolean, "kinds": _kinds}
# Each detector's own keys and how to read them; a key missing here is an unknown key in the file.
_KEYS: dict[str, dict[str, _Parser]] = {
    "publish_rate": {
        "window": _number,
        "baseline_window": _number,
        "spike_factor": _factor,
        "min_per_second": _number,
        "ceiling_per_second": _number,
    },
    "denial_burst": {"threshold": _count, "window": _number, "reasons": _reasons},
    "handshake_failures": {"per_identity": _count, "per_address": _count, "window": _number},
    "connect_flapping": {"threshold": _count, "window": _number},
    "impossible_travel": {
        "max_speed_kmh": _number,
        "slack_km": _non_negative,
        "glitch_km": _non_negative,
        "topic": _gps_topic,
        "fields": _gps_fields,
        "timestamp_unit": _timestamp_unit,
        "max_clock_skew": _number,
    },
    "source_network": {"allowed": _networks, "change_window": _non_negative, "change_prefix": _prefix},
    "subscription_overreach": {"threshold": _count, "window": _number},
    "cloning": {"threshold": _count, "takeovers": _count, "window": _number},
}


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    publish_rate: PublishRate = PublishRate()
    denial_burst: DenialBurst = DenialBurst()
    handshake_failures: HandshakeFailures = HandshakeFailures()
    connect_flapping: ConnectFlapping = ConnectFlapping()
    impossible_travel: ImpossibleTravel = ImpossibleTravel()
    source_network: SourceNetwork = SourceNetwork()
    subscription_overreach: SubscriptionOverreach = SubscriptionOverreach()
    cloning: Cloning = Cloning()

    def enabled(self) -> dict[str, DetectorConfig]:
        """The detectors switched on, by name, in file order."""
        return {name: cfg for name in _DETECTORS if (cfg := getattr(self, name)).enabled}


# --------------------------------------------------------------------------------------- loading


def parse_detectors(at: At, value: Any) -> DetectorSettings:
    """The `detectors:` section; absent means every detector with its defaults."""
    body = at.mapping(value if value is not None else {}, allowed=frozenset(_DETECTORS))
    return DetectorSettings(**{name: _detector(at.key(name), name, raw) for name, raw in body.items()})


def _detector(at: At, name: str, value: Any) -> Any:
    keys = _COMMON | _KEYS[name]
    body = at.mapping(value if value is not None else {}, allowed=frozenset(keys) | _PLAN_KEYS)
    config = _DETECTORS[name](**{k: keys[k](at.key(k), raw) for k, raw in body.items() if k in keys})
    plan = _parse_plan(at, body, config.plan)
    _check(at, config, plan, body)
    return replace(config, plan=plan)


def _parse_plan(at: At, body: Mapping[str, Any], default: Plan) -> Plan:
    plan = default
    if "respond" in body:
        plan = replace(plan, respond=_ladder(at.key("respond"), body["respond"]))
    if "cooldown" in body:
        plan = replace(plan, cooldown=_number(at.key("cooldown"), body["cooldown"]))
    if "throttle" in body:
        factor, seconds = _throttle(at.key("throttle"), body["throttle"])
        plan = replace(plan, throttle_factor=factor, throttle_seconds=seconds)
    return plan


def _check(at: At, config: Any, plan: Plan, body: Mapping[str, Any]) -> None:
    """Combinations that no single key can get wrong on its own."""
    if "quarantine" in plan.respond and not config.kinds <= QUARANTINE_KINDS:
        where = at.key("kinds") if "kinds" in body else at.key("respond")
        others = ", ".join(sorted(config.kinds - QUARANTINE_KINDS))
        where.fail(
            f"quarantine applies only to units, but this detector also watches {others}; "
            "set kinds: [unit] or respond with disconnect instead"
        )
    if isinstance(config, PublishRate) and config.baseline_window <= config.window:
        at.key("baseline_window").fail(
            f"must be longer than window ({config.window:g} s): the baseline is learnt over many windows"
        )
    if isinstance(config, PublishRate) and config.ceiling_per_second < config.min_per_second:
        at.key("ceiling_per_second").fail(
            f"is below min_per_second ({config.min_per_second:g}); a ceiling must not be lower than the floor"
        )
    if isinstance(config, SourceNetwork):
        outside = sorted(set(config.allowed) - config.kinds)
        if outside:
            at.key("allowed").key(outside[0]).fail("lists networks for a kind this detector does not watch")
