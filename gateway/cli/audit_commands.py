"""`fleetgate audit`: verify the hash chain, export it, and read recent records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gateway.cli.common import (
    CliError,
    data_option,
    emit_json,
    friendly_errors,
    json_option,
    open_local,
)
from gateway.cli.output import Column, output_option, show_rows
from gateway.stores.audit_anchor import (
    AnchorError,
    anchors_path,
    check_against,
    key_path,
    latest_anchor,
    load_key,
)
from gateway.stores.datadir import DataDir


@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log."""


@audit.command("verify")
@data_option
@click.option(
    "--expect-head", default=None, help="SEQ:HASH recorded earlier; fails if the log no longer has it."
)
@click.option(
    "--anchor",
    "anchor_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A copy of DATA/audit-anchors.log (or of the gateway's log lines) kept elsewhere; "
    "its newest anchor is checked instead of DATA/audit-anchors.log's.",
)
@json_option
@friendly_errors
def audit_verify(
    data_dir: Path | None, expect_head: str | None, anchor_file: Path | None, as_json: bool
) -> None:
    """Check every record's hash, the chain, and the chain against the newest anchor (the head the
    gateway exported, MACed, outside the database); exit 1 naming the first thing that is wrong."""
    data = DataDir.resolve(data_dir)
    # The anchor first, then the database: an anchor never names a record the snapshot cannot have.
    anchor_source = anchor_file if anchor_file is not None else anchors_path(data.root)
    try:
        anchor = latest_anchor(anchor_source)
    except AnchorError as exc:
        raise CliError(f"{exc}; the anchor cannot be checked") from None
    if anchor_file is not None and anchor is None:
        raise CliError(f"{anchor_file} holds no audit anchor; pass a copy of DATA/audit-anchors.log")
    key = load_key(data.root)
    with open_local(data_dir) as state:
        result = state.audit.verify()
        anchored = state.audit.records(since_seq=anchor.seq - 1, limit=1) if anchor and anchor.seq else []
        records = state.audit.records(since_seq=0) if expect_head else []
    problem = result.problem
    if result.ok and anchor is not None:
        if key is None:
            raise CliError(
                f"{key_path(data.root)} is missing, so the anchor cannot be checked; "
                "restore it from its separate backup"
            )
        problem = check_against(anchor, key, result.checked, {r.seq: r.hash for r in anchored})
    elif result.ok and key is not None and anchor_file is None:
        problem = (
            f"{anchor_source} is missing or holds no anchor although the gateway has written anchors "
            f"({key_path(data.root).name} exists): it was removed or emptied; "
            "verify against a copy kept elsewhere with --anchor FILE"
        )
    if result.ok and not problem and expect_head:
        problem = _check_anchor(expect_head, {r.seq: r.hash for r in records})
    ok = result.ok and not problem
    if as_json:
        emit_json(
            {
                "ok": ok,
                "checked": result.checked,
                "first_bad_seq": result.first_bad_seq,
                "problem": problem,
                "head_seq": result.head_seq,
                "head_hash": result.head_hash,
                "anchor": None
                if anchor is None
                else {"seq": anchor.seq, "at": anchor.at, "event": anchor.event},
            }
        )
    elif ok:
        against = (
            f"; matches the anchor of {anchor.at} ({anchor.event}, record {anchor.seq})"
            if anchor is not None
            else "; no anchor to check against yet (the gateway writes one when it starts)"
        )
        click.echo(
            f"audit log intact: {result.checked} records, head {result.head_seq}:{result.head_hash}{against}"
        )
    if not ok:
        raise CliError(
            f"the audit log was tampered with: {problem}; restore the data directory from a backup"
        )


def _check_anchor(expect_head: str, hashes: dict[int, str]) -> str:
    seq_text, _, digest = expect_head.partition(":")
    if not seq_text.isdigit() or not digest:
        raise CliError(
            f"--expect-head must be SEQ:HASH as printed by `fleetgate audit verify`, not {expect_head!r}"
        )
    if hashes.get(int(seq_text)) != digest:
        return f"record {seq_text} no longer has the hash recorded earlier (the chain was rewritten)"
    return ""


@audit.command("export")
@data_option
@click.option(
    "--json", "--jsonl", "jsonl", is_flag=True, help="Accepted for scripts; the export is JSON lines."
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File (default: stdout)."
)
@friendly_errors
def audit_export(data_dir: Path | None, jsonl: bool, out: Path | None) -> None:
    """Export every audit record as JSON lines (one object per line), oldest first."""
    with open_local(data_dir) as state:
        if out is None:
            state.audit.export_jsonl(sys.stdout)
            return
        with out.open("w", encoding="utf-8") as handle:
            count = state.audit.export_jsonl(handle)
    click.echo(f"Wrote {count} records to {out}.", err=True)


@audit.command("tail")
@data_option
@click.option("-n", "count", type=int, default=20, show_default=True, help="How many of the newest records.")
@output_option
@friendly_errors
def audit_tail(data_dir: Path | None, count: int, output: str) -> None:
    """Show the newest audit records (-o wide: their details and hashes)."""
    with open_local(data_dir) as state:
        head, _ = state.audit.head()
        records = state.audit.records(since_seq=max(0, head - count))
    columns = (
        Column("seq", "seq"),
        Column("at", "at"),
        Column("actor", "actor"),
        Column("action", "action"),
        Column("subject", "subject"),
        Column("outcome", "outcome"),
        Column("reason", "reason"),
        Column(
            "details",
            lambda r: json.dumps(r["details"], sort_keys=True) if r.get("details") else None,
            wide=True,
        ),
        Column("hash", "hash", wide=True),
    )
    show_rows([r.as_dict() for r in records], columns, output, title="audit", name="seq")
