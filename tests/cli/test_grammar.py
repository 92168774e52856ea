"""One grammar, noun then verb, through the real `fleetgate` entry point; the old spellings still work
for one release and say, in one line on stderr, what to type instead."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from gateway.cli import cli
from tests.harness import INSECURE_KEYS, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grammar") / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    return root


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[str, click.Command]]:
    found = [(" ".join(path), command)]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            found += _walk(sub, (*path, name))
    return found


COMMANDS = _walk(cli)


def test_top_level_help_is_grouped_by_workflow_and_lists_every_command() -> None:
    result = run_cli("--help", env={"COLUMNS": "80"})
    assert result.code == 0
    sections = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    titles = [line.rstrip(":") for line in sections if line.endswith(":")]
    assert titles[1:] == [
        "Set up and run a gateway",
        "Register and enroll units",
        "Operators, services, partners and certificates",
        "Watch the live fleet",
        "Policy and audit",
        "Deprecated spellings (they still work, for one release)",
    ]
    rows = [line for line in result.stdout.splitlines() if line.startswith("  ") and line.split()]
    assert set(cli.commands) <= {row.split()[0] for row in rows}
    assert not [row for row in rows if row.endswith("...")]  # whole sentences, wrapped, never cut


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p or "fleetgate" for p, _ in COMMANDS])
def test_every_command_and_option_says_what_it_is_for(path: str, command: click.Command) -> None:
    assert command.help or command.short_help, f"`fleetgate {path}` has no help"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"`fleetgate {path}` option {param.opts[0]} has no help"


def test_units_have_every_verb_in_the_order_they_are_used() -> None:
    unit = cli.commands["unit"]
    assert isinstance(unit, click.Group)
    assert list(unit.commands) == [
        "add", "token", "list", "show", "quarantine", "release", "revoke", "remove",
    ]  # fmt: skip
    for kind, extra in (("operator", ["set-role", "totp"]), ("service", []), ("partner", ["disconnect"])):
        group = cli.commands[kind]
        assert isinstance(group, click.Group)
        assert {"add", "list", "remove", "revoke", *extra} == set(group.commands), kind
    session = cli.commands["session"]
    assert isinstance(session, click.Group) and list(session.commands) == ["list", "kick"]


def test_a_unit_from_add_to_remove_with_noun_then_verb(data: Path) -> None:
    token = run_cli("unit", "add", "TRK-G1", "--vin", "VIN1", "--json", data=data, check=True).json()
    again = run_cli("unit", "token", "TRK-G1", "--json", data=data, check=True).json()
    assert again["token"] != token["token"]  # type: ignore[index]
    listed = run_cli("unit", "list", "--json", data=data, check=True).json()
    assert [(u["unit"], u["state"], u["online"]) for u in listed] == [("TRK-G1", "registered", None)]  # type: ignore[union-attr,index]

    quarantined = run_cli("unit", "quarantine", "TRK-G1", "--reason", "tamper", "--json", data=data)
    assert quarantined.code == 0 and quarantined.stderr == "", quarantined.stderr
    shown = run_cli("unit", "show", "TRK-G1", data=data, check=True).stdout
    assert "quarantined since" in shown and "tamper" in shown
    assert "vin: VIN1" in shown and "{" not in shown  # metadata one line each, not a Python repr
    released = run_cli("unit", "release", "TRK-G1", data=data, check=True)
    assert released.stdout.startswith("Unit TRK-G1 is released")

    refused = run_cli("unit", "revoke", "TRK-G1", "--reason", "stolen", data=data)
    assert refused.code == 1 and "--force" in refused.stderr and "unit quarantine" in refused.stderr
    revoked = run_cli("unit", "revoke", "TRK-G1", "--reason", "stolen", "--force", "--json", data=data)
    assert revoked.code == 0 and revoked.json()["state"] == "revoked"  # type: ignore[index]
    assert run_cli("unit", "remove", "TRK-G1", data=data, check=True).code == 0
    missing = run_cli("unit", "show", "TRK-G1", data=data)
    assert missing.code == 4 and missing.stderr.startswith("error: there is no unit TRK-G1")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (("quarantine", "TRK-OLD", "--reason", "x"), "fleetgate unit quarantine"),
        (("release", "TRK-OLD"), "fleetgate unit release"),
        (("status",), "fleetgate unit list"),
        (("status", "TRK-OLD"), "fleetgate unit show UNIT_ID"),
        (("revoke", "unit/TRK-OLD", "--reason", "x", "--force"), "fleetgate unit revoke TRK-OLD"),
    ],
    ids=["quarantine", "release", "status", "status-unit", "revoke"],
)
def test_old_spellings_work_and_name_the_new_one_in_one_line(
    data: Path, old: tuple[str, ...], new: str
) -> None:
    run_cli("unit", "add", "TRK-OLD", data=data)  # the first case adds it; later ones find it there
    result = run_cli(*old, "--json", data=data)
    assert result.code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and "deprecated" in lines[0] and f"`{new}`" in lines[0]
    assert result.json() is not None  # stdout stays clean JSON


def test_operators_services_and_partners_list_remove_and_change_role(data: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "ids")
    run_cli("operator", "add", "olive", "--role", "auditor", "--out", out, data=data, check=True)
    run_cli("service", "add", "dispatch", "--out", out, data=data, check=True)
    run_cli("partner", "add", "acme-eu", "--tier", "2", "--org", "acme", "--out", out, data=data, check=True)

    operators = run_cli("operator", "list", "--json", data=data, check=True).json()
    assert [(o["name"], o["role"], o["state"]) for o in operators] == [("olive", "auditor", "enrolled")]  # type: ignore[union-attr,index]
    changed = run_cli("operator", "set-role", "olive", "security", "--json", data=data, check=True).json()
    assert changed == {"operator": "olive", "role": "security", "previous": "auditor"}
    [olive] = run_cli("operator", "list", "--json", data=data, check=True).json()  # type: ignore[misc]
    assert olive["role"] == "security"
    bad_role = run_cli("operator", "set-role", "olive", "root", data=data)
    assert bad_role.code == 2

    [partner] = run_cli("partner", "list", "--json", data=data, check=True).json()  # type: ignore[misc]
    assert (partner["name"], partner["tier"], partner["org"]) == ("acme-eu", "2", "acme")
    table = run_cli("partner", "list", data=data, check=True).stdout
    assert "acme-eu" in table and "tier" in table.lower()

    revoked = run_cli("service", "revoke", "dispatch", "--reason", "retired", "--json", data=data, check=True)
    assert revoked.json()["subject"] == "service/dispatch"  # type: ignore[index]
    kept = run_cli("operator", "remove", "olive", data=data)
    assert kept.code == 1 and "valid certificate" in kept.stderr  # it holds a valid certificate
    gone = run_cli("operator", "remove", "olive", "--force", "--json", data=data, check=True).json()
    assert gone["removed"] is True and len(gone["revoked_serials"]) == 1  # type: ignore[index,arg-type]
    assert run_cli("operator", "list", "--json", data=data, check=True).json() == []


def test_session_list_on_the_data_dir_and_kick_needs_the_gateway(data: Path) -> None:
    listed = run_cli("session", "list", "--json", data=data, check=True)
    assert listed.json() == []
    kick = run_cli("session", "kick", "TRK-1", data=data)
    assert kick.code == 1
    assert kick.stderr.count("\n") == 1 and "running gateway" in kick.stderr and "--profile" in kick.stderr


def test_reads_do_not_offer_a_second_factor_changes_do() -> None:
    def options(*path: str) -> set[str]:
        command: click.Command = cli
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        return {opt for p in command.params for opt in p.opts}

    for read in (("unit", "list"), ("unit", "show"), ("events",), ("session", "list")):
        assert "--totp" not in options(*read), read
    for change in (("unit", "release"), ("unit", "revoke"), ("partner", "disconnect"), ("session", "kick")):
        assert "--totp" in options(*change), change
