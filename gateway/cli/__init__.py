"""The `fleetgate` command line: noun then verb (gateway/cli/command_groups.py says why and how)."""

from __future__ import annotations

import os
import sys

import click

from gateway.cli.audit_commands import audit
from gateway.cli.backup_commands import backup, restore
from gateway.cli.ca_commands import cert, crl, init, unit
from gateway.cli.ca_lifecycle import ca_group
from gateway.cli.cluster_commands import cluster
from gateway.cli.command_groups import PipeClosed, SectionedGroup
from gateway.cli.common import (
    ERRORS,
    EXIT_CODES_TEXT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    report_error,
)
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
    ("Set up and run a gateway", ("init", "serve", "server-cert", "backup", "restore", "cluster")),
    ("Register and enroll units", ("unit", "enroll", "renew")),
    (
        "Operators, services, partners and certificates",
        ("operator", "service", "partner", "cert", "crl", "ca"),
    ),
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
    epilog=EXIT_CODES_TEXT,
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

for command in (init, serve, server_cert, backup, restore, cluster, unit, enroll, renew):
    cli.add_command(command)
cli.add_command(role_group("operator", extra=(identity_revoke("operator"),)))
cli.add_command(role_group("service", extra=(identity_revoke("service"),)))
cli.add_command(role_group("partner", with_tier=True, extra=(identity_revoke("partner"), partner_disconnect)))
for command in (cert, crl, ca_group, session, events, flows, policy, audit):
    cli.add_command(command)
for command in (quarantine, release, revoke, status):  # the deprecated spellings
    cli.add_command(command)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


def run(args: list[str]) -> int:
    """Run one command line and return its exit status (gateway/cli/common.py: EXIT_*).

    Errors are one sentence on stderr, or the admin API's JSON shape when the command line asks for
    JSON; a reader that closes the pipe early (`fleetgate unit list | head -1`) ends the command
    quietly with status 0, as git and kubectl do; Ctrl-C ends it with 130 and no traceback."""
    ERRORS.json = wants_json(args)
    try:
        code = cli.main(args, prog_name="fleetgate", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here for output still buffered
    except (BrokenPipeError, PipeClosed):
        _silence_stdout()
        return EXIT_OK
    except click.UsageError as exc:
        _usage_error(exc)
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("", err=True)  # end the line the terminal's ^C was echoed on
        return EXIT_INTERRUPTED
    return code if isinstance(code, int) else EXIT_OK


def wants_json(args: list[str]) -> bool:
    """Does this command line ask for JSON (`--json`, `-o json`, `--output=json`, `-ojson`)? Read
    before click parses anything, so that even a usage error is reported in JSON."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg in ("--json", "-ojson", "--output=json"):
            return True
        if arg in ("-o", "--output") and i + 1 < len(args) and args[i + 1] == "json":
            return True
    return False


def _usage_error(exc: click.UsageError) -> None:
    if exc.ctx is not None and not ERRORS.json:
        click.echo(exc.ctx.get_usage(), err=True)
        click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
    report_error(exc.format_message(), "usage")


def _silence_stdout() -> None:
    """The reader is gone: point stdout at /dev/null, so Python's final flush does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
