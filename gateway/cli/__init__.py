"""The `fleetgate` command line: noun then verb (gateway/cli/command_groups.py says why and how)."""

from __future__ import annotations

import click

from gateway.cli.audit_commands import audit
from gateway.cli.backup_commands import backup, restore
from gateway.cli.ca_commands import cert, crl, init, unit
from gateway.cli.command_groups import SectionedGroup
from gateway.cli.device import enroll, renew
from gateway.cli.flows_command import flows
from gateway.cli.ops_commands import (
    events,
    identity_revoke,
    partner_disconnect,
    quarantine,
    release,
    revoke,
    status,
    unit_list,
    unit_quarantine,
    unit_release,
    unit_revoke,
    unit_show,
)
from gateway.cli.policy_commands import policy
from gateway.cli.roles import role_group
from gateway.cli.serve import serve
from gateway.cli.server_cert import server_cert
from gateway.cli.session_commands import session

SECTIONS = (
    ("Set up and run a gateway", ("init", "serve", "server-cert", "backup", "restore")),
    ("Register and enroll units", ("unit", "enroll", "renew")),
    ("Operators, services, partners and certificates", ("operator", "service", "partner", "cert", "crl")),
    ("Watch the live fleet", ("session", "events", "flows")),
    ("Policy and audit", ("policy", "audit")),
    (
        "Deprecated spellings (they still work, for one release)",
        ("quarantine", "release", "revoke", "status"),
    ),
)


@click.group(
    cls=SectionedGroup,
    sections=SECTIONS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.version_option(package_name="fleetgate")
def cli() -> None:
    """fleetgate: the fleet's CA, EST enrollment service and zero-trust mTLS MQTT broker.

    Commands are a noun, then a verb: `fleetgate unit quarantine TRK-00042 --reason ...`.
    """


# A unit's life in the order it happens: registered, enrolled, watched, contained, cut off, forgotten.
for command in (unit_list, unit_show, unit_quarantine, unit_release, unit_revoke):
    unit.add_command(command)
unit.commands["remove"] = unit.commands.pop("remove")  # forgetting a unit comes last

for command in (init, serve, server_cert, backup, restore, unit, enroll, renew):
    cli.add_command(command)
cli.add_command(role_group("operator", extra=(identity_revoke("operator"),)))
cli.add_command(role_group("service", extra=(identity_revoke("service"),)))
cli.add_command(role_group("partner", with_tier=True, extra=(identity_revoke("partner"), partner_disconnect)))
for command in (cert, crl, session, events, flows, policy, audit, quarantine, release, revoke, status):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="fleetgate")
