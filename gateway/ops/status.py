"""What operations answer: an operation's result, `fleetgate unit list` rows (`GET /api/units`), the
partner blast radius, and a session as the admin API shows it.

Built from the registry (state, certificates, quarantine facts) and, when a gateway is asking, its
live sessions. The CLI acting on a data dir without a gateway passes no sessions: `online` is then
unknown (None), not "offline", because nobody asked the process that knows.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from gateway.ops.quarantine import BY_KEY, REASON_KEY, SINCE_KEY
from pki.records import CertificateRecord
from pki.store import Registry

if TYPE_CHECKING:  # annotations only: the CLI reads statuses without loading the broker
    from gateway.broker import SessionInfo


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class OpResult:
    action: str  # "quarantine", "release", "revoke"
    subject: str  # "unit/TRK-1"
    changed: bool  # False: it already was in that state; nothing was written
    state: str  # the identity's registry state afterwards
    elapsed_ms: float
    sessions_closed: int = 0
    revoked_serials: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)  # quarantine: reason, since, by

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UnitStatus:
    unit: str
    state: str
    online: bool | None  # None: not known (no gateway was asked)
    last_seen: str | None  # ISO time; "now" is the time of the answer when online
    address: str | None
    cert_serial: str | None
    cert_not_after: str | None
    quarantined_since: str | None
    quarantine_reason: str | None
    quarantined_by: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PartnerReport:
    """What a partner disconnect did (or, with dry_run, would do), and how long it took."""

    partner: str
    dry_run: bool
    identities: tuple[str, ...]
    certificates: int  # valid certificates revoked
    tokens: int  # pending enrollment tokens expired
    sessions: int  # live sessions closed
    subscriptions: int  # subscriptions purged (live and offline sessions)
    offline_sessions: int  # persistent sessions discarded
    serials: tuple[str, ...]
    elapsed_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _newest_valid(certs: list[CertificateRecord]) -> dict[str, CertificateRecord]:
    newest: dict[str, CertificateRecord] = {}
    for cert in certs:  # ordered by not_before: the last valid one wins
        if cert.status == "valid":
            newest[cert.id] = cert
    return newest


def unit_statuses(
    registry: Registry,
    sessions: dict[str, SessionInfo] | None,
    last_seen: dict[str, float],
    now: datetime,
    only: str | None = None,
) -> list[UnitStatus]:
    """Every unit (or just `only`), in id order."""
    if only is None:
        records = registry.list_identities("unit")
        certs = _newest_valid(registry.list_certificates(kind="unit"))
    else:
        record = registry.get_identity("unit", only)
        records = [record] if record is not None else []
        certs = _newest_valid(registry.list_certificates(kind="unit", ident=only))
    rows = []
    for record in records:
        session = sessions.get(record.id) if sessions is not None else None
        online = None if sessions is None else bool(session and session.connected)
        seen = now.timestamp() if online else last_seen.get(record.id, session.since if session else None)
        cert = certs.get(record.id)
        meta = record.metadata
        quarantined = record.state == "quarantined"
        rows.append(
            UnitStatus(
                unit=record.id,
                state=record.state,
                online=online,
                last_seen=_iso(seen),
                address=session.peer.address if session and session.peer and online else None,
                cert_serial=format(cert.serial, "x") if cert else None,
                cert_not_after=cert.not_after.isoformat() if cert else None,
                quarantined_since=meta.get(SINCE_KEY) if quarantined else None,
                quarantine_reason=meta.get(REASON_KEY) if quarantined else None,
                quarantined_by=meta.get(BY_KEY) if quarantined else None,
            )
        )
    return rows


def session_view(info: SessionInfo) -> dict[str, Any]:
    """One MQTT session for `GET /api/sessions`."""
    peer = info.peer
    return {
        "client_id": info.client_id,
        "identity": str(peer.identity) if peer and peer.identity else None,
        "address": peer.address if peer else None,
        "connected": info.connected,
        "since": _iso(info.since),
        "subscriptions": list(info.subscriptions),
        "queued": info.queued,  # in memory and, for a persistent session, on disk
        "queued_bytes": info.queued_bytes,
        "inflight": info.inflight,
        "holding": info.holding,  # far enough behind to hold back its publishers (flow control)
        "dropped": info.dropped,  # deliveries dropped at its queue bound
        "expiry_interval": info.expiry_interval,
        "certificate_serial": format(peer.certificate_serial, "x")
        if peer and peer.certificate_serial
        else None,
    }


# --- asking for some units: filters and pages (`unit list --state ...`, `GET /api/units?...`) ----

UNIT_STATES = ("registered", "enrolled", "quarantined", "revoked")
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s`, `2w`, or combined (`1d12h`)."""
    cleaned = text.strip().lower()
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise ValueError(f"{text!r} is not a duration; write e.g. 7d, 12h, 30m or 1d12h")
    return sum((timedelta(**{_UNITS[unit]: int(number)}) for number, unit in parts), timedelta(0))


@dataclass(frozen=True)
class UnitFilter:
    """Which units a listing wants; None means any."""

    states: frozenset[str] | None = None
    online: bool | None = None
    expiring_within: timedelta | None = None  # its newest certificate ends within this (or has ended)

    def __post_init__(self) -> None:
        unknown = sorted((self.states or frozenset()) - set(UNIT_STATES))
        if unknown:
            raise ValueError(f"state {unknown[0]!r} is not one of {', '.join(UNIT_STATES)}")

    def matches(self, row: UnitStatus, now: datetime) -> bool:
        if self.states is not None and row.state not in self.states:
            return False
        if self.online is not None and row.online != self.online:  # unknown (None) is neither
            return False
        if self.expiring_within is not None:
            if row.cert_not_after is None:
                return False
            if datetime.fromisoformat(row.cert_not_after) > now + self.expiring_within:
                return False
        return True

    def apply(self, rows: list[UnitStatus], now: datetime) -> list[UnitStatus]:
        return [row for row in rows if self.matches(row, now)]


@dataclass(frozen=True)
class Page:
    items: list[UnitStatus]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def as_dict(self) -> dict[str, Any]:
        return {
            "units": [row.as_dict() for row in self.items],
            "page": self.page,
            "per_page": self.per_page,
            "total": self.total,
            "pages": self.pages,
        }


def page_of(rows: list[UnitStatus], page: int, per_page: int) -> Page:
    """Page `page` (from 1) of rows already in id order: pages are stable while units are added."""
    start = (page - 1) * per_page
    return Page(rows[start : start + per_page], page, per_page, len(rows))
