"""`fleetgate unit add --from-csv FILE`: register a fleet from a spreadsheet, with a report per row.

The rules (all or nothing, `--skip-existing`) are gateway/ops/provisioning.py's, on the data dir or
through the admin API (`POST /api/units`, in batches of 500, each all or nothing). Tokens are
secrets, so they never go to a terminal table: `--tokens-out FILE` writes them (0600, refusing to
overwrite an earlier file of tokens), or `--json` prints them with the report for a program to read.
"""

from __future__ import annotations

import csv
import io
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from gateway.cli.backends import Backend
from gateway.cli.common import CliError, emit_json
from gateway.cli.output import Column, show_rows
from gateway.ops.provisioning import UnitRequest, parse_csv
from gateway.ops.quarantine import OpsError

REPORT_COLUMNS = (
    Column("row", "row"),
    Column("unit", "unit"),
    Column("status", "status"),
    Column("code", "code"),
    Column("error", "error"),
)


def read_requests(path: Path) -> list[UnitRequest]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path} is not UTF-8 text; save the spreadsheet as CSV (UTF-8)", "bad_csv") from None
    try:
        requests = parse_csv(text)
    except OpsError as exc:
        raise CliError(f"{path}: {exc}", exc.code) from None
    if not requests:
        raise CliError(f"{path} lists no units under its header; one unit id a line", "empty_csv")
    return requests


def add_from_csv(
    b: Backend,
    path: Path,
    tokens_out: Path | None,
    ttl: timedelta | None,
    skip_existing: bool,
    as_json: bool,
) -> None:
    if tokens_out is None and not as_json:
        raise CliError(
            "the tokens of a batch are written to a file, never to the terminal: "
            "add --tokens-out tokens.csv (or --json for a program to read them)",
            "tokens_out_required",
        )
    if tokens_out is not None and tokens_out.exists():
        raise CliError(f"{tokens_out} exists; tokens are shown once, so choose a new file", "file_exists")
    answer = b.register(read_requests(path), ttl, skip_existing)
    results: list[dict[str, Any]] = answer["results"]
    registered = [r for r in results if r["status"] == "registered"]
    if tokens_out is not None and registered:
        write_tokens(tokens_out, registered)
    if as_json:
        shown = (
            results if tokens_out is None else [{k: v for k, v in r.items() if k != "token"} for r in results]
        )
        emit_json(
            {**_summary(results), "results": shown, "tokens_out": str(tokens_out) if tokens_out else None}
        )
    else:
        show_rows(results, REPORT_COLUMNS, "table", title=f"units from {path.name}", name="unit")
    if "error" in answer:
        raise CliError(str(answer["error"]), str(answer.get("code") or "refused"))
    if not as_json:
        counts = _summary(results)
        where = f"; tokens in {tokens_out} (0600)" if registered else ""
        click.echo(
            f"Registered {counts['registered']} unit(s), {counts['exists']} registered already{where}."
        )


def _summary(results: list[dict[str, Any]]) -> dict[str, int]:
    return {
        s: sum(1 for r in results if r["status"] == s)
        for s in ("registered", "exists", "refused", "not_registered")
    }


def write_tokens(path: Path, rows: list[dict[str, Any]]) -> None:
    """unit, token, expires_at for each registered unit: JSON if the name ends in .json, else CSV.
    Created 0600 and never over an existing file (O_EXCL): it holds secrets."""
    fields = ("unit", "token", "expires_at")
    if path.suffix.lower() == ".json":
        body = json.dumps([{k: r[k] for k in fields} for r in rows], indent=2) + "\n"
    else:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        writer.writerows([r[k] for k in fields] for r in rows)
        body = out.getvalue()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)


def add_one_remotely(b: Backend, unit_id: str, vin: str | None, ttl: timedelta | None, as_json: bool) -> None:
    """`fleetgate unit add UNIT --profile ...`: one unit through `POST /api/units`."""
    answer = b.register([UnitRequest(1, unit_id, vin)], ttl, False)
    [result] = answer["results"]
    if "error" in answer:
        raise CliError(str(result.get("error") or answer["error"]), str(answer.get("code") or "refused"))
    if as_json:
        emit_json({"unit": unit_id, "token": result["token"], "expires_at": result["expires_at"]})
        return
    click.echo(
        f"Registered unit {unit_id} on {b.where}. One-time enrollment token (until {result['expires_at']}):"
    )
    click.echo(result["token"])
