"""`fleetgate flows`: the live map of who sends which data class to whom, from a running gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from gateway.cli.admin_client import resolve_remote
from gateway.cli.common import CliError, console, data_option, emit_json, friendly_errors
from gateway.cli.output import output_option, plain_table
from gateway.context.flows import FlowMap, FlowRow, ProtectEntry
from gateway.render.flows_render import (
    TABLE_HEADERS,
    protect_caption,
    table_rows,
    to_mermaid,
    to_svg,
    to_table,
)
from gateway.render.safe_text import printable


def flowmap_from_dict(data: dict[str, Any]) -> FlowMap:
    """The FlowMap behind `GET /api/flows` (flows_render.flowmap_to_dict), to render it here."""
    rows = tuple(
        FlowRow(
            group=r["group"],
            kind=r["kind"],
            action=r["action"],
            template=r["template"],
            messages=int(r["messages"]),
            denied=int(r["denied"]),
            bytes=int(r["bytes"]),
            rate=float(r["rate_per_second"]),
            identities=int(r["identities"]),
            data_classes=frozenset(r["data_classes"]),
            protect=bool(r["protect_surface"]),
        )
        for r in data["rows"]
    )
    protect = tuple(
        ProtectEntry(e["group"], frozenset(e["classes"]), tuple(e["templates"]), int(e["messages"]))
        for e in data["protect_surface"]
    )
    return FlowMap(
        float(data["generated_at"]),
        float(data["window_seconds"]),
        rows,
        protect,
        frozenset(data["sensitive_classes"]),
        int(data["overflow"]),
    )


@click.command("flows")
@click.option("--server", default=None, help="Admin API URL, e.g. https://gateway:8443.")
@click.option("--cert", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Operator cert.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Its private key.")
@click.option("--ca", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Fleet root.")
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file with server/cert/key/ca (or $FLEETGATE_PROFILE).",
)
@output_option
@click.option("--mermaid", is_flag=True, help="The map as a Mermaid flowchart.")
@click.option(
    "--svg",
    "svg",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Draw it into this SVG file (any browser shows it).",
)
@click.option("--png", "png", hidden=True, default=None, help="Replaced by --svg.")
@data_option  # accepted like every command's; the map itself lives in the running gateway
@friendly_errors
def flows(
    server: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    profile: Path | None,
    output: str,
    mermaid: bool,
    svg: Path | None,
    png: str | None,
    data_dir: Path | None = None,
) -> None:
    """Who published and subscribed what, who received which data classes; the protect surface
    (receivers of pii or commercial data) is marked. Reads the running gateway's map (GET /api/flows)."""
    if png is not None:
        raise click.UsageError(
            "the flow map is drawn as SVG now: use --svg FILE (rsvg-convert makes a PNG of it if needed)"
        )
    remote = resolve_remote(server, cert, key, ca, profile)
    if remote is None:
        raise CliError(
            "the flow map lives in the running gateway: pass --profile (or --server, --cert, --key)"
        )
    data = remote.call("GET", "/api/flows")
    if output == "json":
        emit_json(data)
        return
    if output == "name":  # who took part: one group a line
        for group in sorted({row["group"] for row in data["rows"]}):
            click.echo(printable(group))
        return
    flow_map = flowmap_from_dict(data)
    if svg is not None:
        svg.write_text(to_svg(flow_map), encoding="utf-8")
        click.echo(f"Wrote {svg} ({len(flow_map.rows)} flows).")
    if mermaid:
        click.echo(to_mermaid(flow_map))
    if svg is None and not mermaid:
        if console.is_terminal:
            console.print(to_table(flow_map))
        else:  # a pipe: plain columns, one flow a line (gateway/cli/output.py)
            plain_table(
                list(TABLE_HEADERS), [[printable(c) or "-" for c in row] for row in table_rows(flow_map)]
            )
            click.echo(printable(protect_caption(flow_map)))
