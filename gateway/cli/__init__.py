"""The `fleetgate` command line."""

from __future__ import annotations

import click

from gateway.cli.audit_commands import audit
from gateway.cli.backup_commands import backup, restore
from gateway.cli.ca_commands import cert, crl, init, unit
from gateway.cli.ca_lifecycle import ca_group
from gateway.cli.device import enroll, renew
from gateway.cli.flows_command import flows
from gateway.cli.ops_commands import events, partner_disconnect, quarantine, release, revoke, status
from gateway.cli.policy_commands import policy
from gateway.cli.roles import role_group
from gateway.cli.serve import serve
from gateway.cli.server_cert import server_cert


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="fleetgate")
def cli() -> None:
    """fleetgate: the fleet's CA, EST enrollment service and zero-trust mTLS MQTT broker."""


for command in (init, serve, unit, cert, crl, enroll, renew, policy, audit):
    cli.add_command(command)
for command in (quarantine, release, status, events, revoke, backup, restore, flows, server_cert, ca_group):
    cli.add_command(command)
cli.add_command(role_group("operator"))
cli.add_command(role_group("service"))
cli.add_command(role_group("partner", with_tier=True, extra=(partner_disconnect,)))


def main() -> None:
    cli(prog_name="fleetgate")
