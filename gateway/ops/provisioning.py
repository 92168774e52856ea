"""Registering units at fleet scale: many at once, all or nothing, with a report per row.

An integrator's factory line registers hundreds of trucks from a spreadsheet or its backend
(`fleetgate unit add --from-csv FILE`, `POST /api/units`). What it needs back is, per row, whether
that unit was registered and its one-time token, or why not, so it can fix the file and run it again.

All or nothing: every row is checked first (a valid unit id, not twice in the batch, not registered
already), and if any row fails nothing is registered: a half-registered batch would leave the
integrator guessing which tokens exist. `skip_existing` makes a re-run idempotent instead: units
already registered are reported `exists` and left alone (their tokens are not replaced; `fleetgate
unit token` gives one a new one). The registrations then happen in one registry transaction.

Tokens are secrets: they are returned once, here, and stored only as hashes; audit records carry
the unit and the token's expiry, never the token.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gateway.ops.quarantine import OpsError
from gateway.stores.audit_log import AuditLog
from pki.errors import PkiError
from pki.names import IdentityError, validate_id
from pki.service import FleetCA

MAX_VIN = 64
CSV_COLUMNS = ("unit", "vin")
UNIT_COLUMN_ALIASES = ("unit", "unit_id", "id")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class UnitRequest:
    row: int  # where to fix it: the line of a CSV file (its header is line 1), the item of a list (from 1)
    unit: str
    vin: str | None = None


@dataclass(frozen=True)
class RowResult:
    row: int
    unit: str
    status: str  # registered | exists (skipped) | refused | not_registered (another row failed)
    code: str = ""  # why refused: invalid_id, duplicate_in_batch, already_exists, invalid_vin, ...
    error: str = ""
    token: str | None = None
    expires_at: str | None = None

    def as_dict(self, *, with_token: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_token:
            out.pop("token")
        return out


@dataclass(frozen=True)
class BulkReport:
    results: tuple[RowResult, ...]

    @property
    def ok(self) -> bool:
        return not any(r.status in ("refused", "not_registered") for r in self.results)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def summary(self) -> dict[str, int]:
        return {s: self.count(s) for s in ("registered", "exists", "refused", "not_registered")}


def parse_csv(text: str) -> list[UnitRequest]:
    """Rows of a CSV file with a header: `unit` (or `unit_id`, `id`) and optionally `vin`.

    Blank lines are skipped; an unknown column is refused, so a typo in a header never silently
    drops data. Raises OpsError (400) with the line to fix."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))  # spreadsheets like to start with a BOM
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    if header is None:
        raise OpsError("empty_csv", "the CSV file is empty; write a header `unit,vin`, then one unit a line")
    names = [cell.strip().lower() for cell in header]
    unit_columns = [i for i, name in enumerate(names) if name in UNIT_COLUMN_ALIASES]
    unknown = [name for name in names if name not in (*UNIT_COLUMN_ALIASES, "vin")]
    if len(unit_columns) != 1 or unknown:
        raise OpsError(
            "bad_csv_header",
            f"the CSV header is {','.join(names)!r}; "
            "it needs one `unit` column and may have `vin`, nothing else",
        )
    unit_at, vin_at = unit_columns[0], names.index("vin") if "vin" in names else None
    requests: list[UnitRequest] = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        cells = [*row, *([""] * len(names))]
        vin = cells[vin_at].strip() if vin_at is not None else ""
        requests.append(UnitRequest(reader.line_num, cells[unit_at].strip(), vin or None))
    return requests


def requests_from_json(items: object, limit: int) -> list[UnitRequest]:
    """The `units` list of `POST /api/units`: objects with `unit` and optionally `vin`."""
    if not isinstance(items, list) or not items:
        raise OpsError("bad_request", '"units" must be a non-empty list of {"unit": ..., "vin": ...} objects')
    if len(items) > limit:
        raise OpsError("too_many_units", f"at most {limit} units per request; send the rest in another one")
    requests = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, dict) or not isinstance(item.get("unit"), str):
            raise OpsError("bad_request", f'item {number} of "units" must be an object with a "unit" string')
        vin = item.get("vin")
        if vin is not None and not isinstance(vin, str):
            raise OpsError("bad_request", f'item {number}: "vin" must be a string')
        extra = set(item) - {"unit", "vin"}
        if extra:
            raise OpsError(
                "bad_request", f"item {number}: unknown field {sorted(extra)[0]!r}; send unit and vin"
            )
        requests.append(UnitRequest(number, item["unit"], vin or None))
    return requests


def _check(request: UnitRequest, seen: set[str]) -> tuple[str, str] | None:
    try:
        validate_id("unit", request.unit)
    except IdentityError as exc:
        return exc.reason, str(exc)
    if request.unit in seen:
        return "duplicate_in_batch", f"unit {request.unit} is listed twice; keep one row"
    if request.vin is not None and (len(request.vin) > MAX_VIN or _CONTROL.search(request.vin)):
        return "invalid_vin", f"the VIN of {request.unit} must be at most {MAX_VIN} printable characters"
    return None


def register_units(
    ca: FleetCA,
    requests: Sequence[UnitRequest],
    now: datetime,
    token_ttl: timedelta,
    *,
    skip_existing: bool = False,
) -> BulkReport:
    """Check every row, then register them all in one transaction, or none (see the module doc)."""
    results: list[RowResult] = []
    seen: set[str] = set()
    for request in requests:
        problem = _check(request, seen)
        seen.add(request.unit)
        if problem is None and ca.registry.get_identity("unit", request.unit) is not None:
            if skip_existing:
                results.append(RowResult(request.row, request.unit, "exists"))
                continue
            problem = ("already_exists", f"unit {request.unit} is registered already; add --skip-existing")
        if problem is not None:
            results.append(RowResult(request.row, request.unit, "refused", *problem))
        else:
            results.append(RowResult(request.row, request.unit, "pending"))
    if any(r.status == "refused" for r in results):
        return BulkReport(tuple(_not_registered(results)))
    by_row = {r.row: r for r in requests}
    expires = (now + token_ttl).isoformat()
    try:
        with ca.registry.transaction():
            for index, result in enumerate(results):
                if result.status != "pending":
                    continue
                request = by_row[result.row]
                metadata = {"vin": request.vin} if request.vin else None
                try:
                    token = ca.register_unit(request.unit, now, token_ttl=token_ttl, metadata=metadata)
                except PkiError as exc:  # e.g. registered by someone else since the check above
                    results[index] = RowResult(result.row, result.unit, "refused", exc.reason, str(exc))
                    raise _RollBack from None
                results[index] = replace(result, status="registered", token=token, expires_at=expires)
    except _RollBack:
        return BulkReport(tuple(_not_registered(results)))
    return BulkReport(tuple(results))


class _RollBack(Exception):
    """One registration failed inside the transaction: undo the others (all or nothing)."""


def _not_registered(results: Iterable[RowResult]) -> list[RowResult]:
    because = "not registered: another row was refused, and a batch registers all or nothing"
    return [
        r
        if r.status in ("refused", "exists")
        else RowResult(r.row, r.unit, "not_registered", "batch_refused", because)
        for r in results
    ]


def audit_registrations(audit: AuditLog, report: BulkReport, actor: str, now: datetime) -> None:
    """One `unit.add` record per unit registered, as `fleetgate unit add` writes (never the token)."""
    for result in report.results:
        if result.status == "registered":
            audit.append(
                actor=actor,
                action="unit.add",
                subject=f"unit/{result.unit}",
                outcome="ok",
                details={"expires_at": result.expires_at, "batch": True},
                now=now,
            )
