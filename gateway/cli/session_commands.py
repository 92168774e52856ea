"""`fleetgate session list|kick`: the MQTT sessions a gateway holds, and closing one without revoking.

Through the admin API (`--profile`, `--server ...`) the running gateway answers: who is connected,
from where, subscriptions, queues; `kick` closes one live session (5.0: DISCONNECT 0x98) and the
client may reconnect at once. On the data dir alone, `list` shows the sessions stored there
(persistent ones, and those live when last written) with `connected` unknown, and `kick` says that
it needs the running gateway: nothing else holds a live session.
"""

from __future__ import annotations

from typing import Any

import click

from gateway.cli.command_groups import OrderedGroup
from gateway.cli.common import EXIT_CODES, friendly_errors, hint
from gateway.cli.ops_commands import (
    done,
    ops_errors,
    read_where,
    read_where_options,
    split_where,
    where_options,
)
from gateway.cli.output import Column, show_rows

CONNECTED = {True: "yes", False: "no", None: "?"}


@click.group("session", cls=OrderedGroup)
def session() -> None:
    """Live MQTT sessions: who is connected, and closing one session without revoking anything."""


@session.command("list", epilog=EXIT_CODES)
@click.option("--identity", "identity", default=None, help="Only sessions of this identity, e.g. unit/TRK-1.")
@click.option(
    "--kind",
    type=click.Choice(["unit", "operator", "service", "partner", "lab"]),
    default=None,
    help="Only sessions of this kind of identity (lab: the anonymous lab listener's clients).",
)
@read_where_options
@friendly_errors
@ops_errors
def session_list(identity: str | None, kind: str | None, **where: Any) -> None:
    """MQTT sessions: client id, identity, connected, address, queued messages (-o wide: subscriptions)."""
    b, output = read_where(where)
    rows = [r for r in b.sessions() if _wanted(r, identity, kind)]
    columns = (
        Column("client id", "client_id"),
        Column("identity", "identity"),
        Column("connected", lambda r: CONNECTED[r["connected"]]),
        Column("address", "address"),
        Column("since", "since"),
        Column("subscriptions", lambda r: len(r["subscriptions"])),
        Column("queued", "queued"),
        Column("inflight", "inflight", wide=True),
        Column("serial", "certificate_serial", wide=True),
        Column("filters", lambda r: " ".join(r["subscriptions"]), wide=True),
    )
    show_rows(rows, columns, output, title=f"sessions ({b.where})", name="client_id")
    if rows and rows[0]["connected"] is None and output in ("table", "wide"):
        hint("connected: ? — ask a running gateway (--server or --profile) to know who is connected.")


def _wanted(row: dict[str, Any], identity: str | None, kind: str | None) -> bool:
    label = row["identity"] or ""
    if identity is not None and label != identity:
        return False
    if kind == "lab":
        return not label
    return kind is None or label.startswith(f"{kind}/")


@session.command("kick", epilog=EXIT_CODES)
@click.argument("client_id")
@click.option(
    "--reason",
    default="closed by an operator",
    show_default=True,
    help="Sent to a 5.0 client as the DISCONNECT reason string, and audited.",
)
@click.option("--force", is_flag=True, help="Required for a unit: its session carries vehicle control.")
@where_options
@friendly_errors
@ops_errors
def session_kick(client_id: str, reason: str, force: bool, **where: Any) -> None:
    """Close CLIENT_ID's live session; it may reconnect at once (to keep it out, revoke it)."""
    b, as_json = split_where(where)
    result = b.kick(client_id, reason, force)
    closed = int(result.get("sessions_closed") or 0)
    text = (
        f"Closed the live session of {client_id}; it may reconnect."
        if closed
        else f"{client_id} was no longer connected."
    )
    done(result, as_json, text)
