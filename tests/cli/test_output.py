"""Output scripts can trust, through the real `fleetgate` entry point: `-o table|wide|json|name`,
plain columns in a pipe, a quiet end when the reader closes the pipe, errors in the admin API's JSON
shape, and exit codes that mean one thing each, listed once in docs/operations.md."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import click
import pytest

from gateway.cli import cli, common
from gateway.cli.common import open_local, utc_now
from tests.harness import FLEETGATE, INSECURE_KEYS, run_cli

ROOT = Path(__file__).resolve().parents[2]
UNITS = 400  # enough JSON (~120 KiB) to overflow a pipe's buffer, so the writer meets a closed pipe


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("output") / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    with open_local(root) as state:  # registered in-process: 400 CLI runs would take minutes
        for number in range(UNITS):
            state.ca.register_unit(f"TRK-{number:05d}", utc_now())
    run_cli("unit", "quarantine", "TRK-00001", "--reason", "tamper alarm", data=root, check=True)
    return root


def _listing_commands() -> list[tuple[str, click.Command]]:
    found = []

    def walk(command: click.Command, path: tuple[str, ...]) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        elif path[-1] in ("list", "show", "tail", "events", "status", "flows"):
            found.append((" ".join(path), command))

    walk(cli, ())
    return found


@pytest.mark.parametrize(("path", "command"), _listing_commands(), ids=[p for p, _ in _listing_commands()])
def test_every_listing_and_show_command_takes_o_and_json(path: str, command: click.Command) -> None:
    options = {opt for param in command.params for opt in param.opts}
    assert {"-o", "--output", "--json"} <= options, path


def test_table_in_a_pipe_is_plain_aligned_columns(data: Path) -> None:
    result = run_cli("unit", "list", data=data, check=True)
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["UNIT", "STATE", "ONLINE", "LAST_SEEN", "CERT_EXPIRES", "QUARANTINED_SINCE"]
    assert len(lines) == UNITS + 1  # one line per unit: nothing wrapped, no title, no rules
    assert not re.search("[│─┃━┏┡]", result.stdout)
    starts = {line.index("registered") for line in lines[1:] if "registered" in line}
    assert len(starts) == 1 and lines[0].index("STATE") in starts  # aligned under its header
    quarantined = next(line for line in lines if line.startswith("TRK-00001 "))
    assert quarantined.split()[1] == "quarantined" and len(quarantined.split()) == 6  # one token a cell
    assert result.stderr == ""  # the "online: ?" note is for a person at a terminal


def test_wide_json_and_name(data: Path) -> None:
    wide = run_cli("unit", "list", "-o", "wide", data=data, check=True).stdout.splitlines()
    assert wide[0].split() == [
        "UNIT", "STATE", "ONLINE", "LAST_SEEN", "CERT_EXPIRES", "SERIAL", "ADDRESS", "QUARANTINED_SINCE",
        "WHY", "BY",
    ]  # fmt: skip
    assert "tamper alarm" in next(line for line in wide if line.startswith("TRK-00001 "))

    as_json = run_cli("unit", "list", "-o", "json", data=data, check=True).json()
    assert as_json == run_cli("unit", "list", "--json", data=data, check=True).json()
    assert isinstance(as_json, list) and len(as_json) == UNITS
    assert as_json[1]["quarantine_reason"] == "tamper alarm"

    names = run_cli("unit", "list", "-o", "name", data=data, check=True).stdout.splitlines()
    assert names[:2] == ["TRK-00000", "TRK-00001"] and len(names) == UNITS
    assert run_cli("unit", "show", "TRK-00001", "-o", "name", data=data, check=True).stdout == "TRK-00001\n"
    shown = run_cli("unit", "show", "TRK-00001", "-o", "json", data=data, check=True).json()
    assert isinstance(shown, dict) and shown["state"] == "quarantined"


@pytest.mark.parametrize(
    "args",
    [("unit", "list"), ("unit", "list", "-o", "json"), ("audit", "export"), ("cert", "list")],
    ids=["table", "json", "audit-export", "cert-list"],
)
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(data: Path, args: tuple[str, ...]) -> None:
    command = " ".join([*(f"'{part}'" for part in FLEETGATE), *args, "--data", f"'{data}'"])
    shell = f"set -o pipefail; {command} 2>'{data.parent}/stderr' | head -1 >/dev/null"
    for _ in range(3):  # the race between writer and reader goes either way: each way must be quiet
        result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        assert (data.parent / "stderr").read_text() == ""


def test_errors_are_the_apis_json_shape_when_json_is_asked_for(data: Path) -> None:
    missing = run_cli("unit", "show", "NOPE-1", "-o", "json", data=data)
    assert missing.code == 4 and missing.stdout == ""
    assert json.loads(missing.stderr) == {
        "error": "there is no unit NOPE-1; check the id with `fleetgate unit list`",
        "code": "unknown_unit",
    }
    for args in (("unit", "show", "--json"), ("unit", "list", "--bogus", "-o", "json")):
        usage = run_cli(*args, data=data)
        assert usage.code == 2 and json.loads(usage.stderr)["code"] == "usage", args
    refused = run_cli("unit", "revoke", "TRK-00002", "--reason", "x", "--json", data=data)
    answer = json.loads(refused.stderr)
    assert refused.code == 1 and set(answer) == {"error", "code"} and "--force" in answer["error"]
    plain = run_cli("unit", "show", "NOPE-1", data=data)
    assert plain.code == 4 and plain.stderr.startswith("error: there is no unit NOPE-1")
    typo = run_cli("unit", "lst", data=data)
    assert typo.code == 2 and "error: No such command 'lst'" in typo.stderr


def test_crl_and_audit_export_speak_json_too(data: Path) -> None:
    run_cli("unit", "revoke", "TRK-00003", "--reason", "keyCompromise", "--force", data=data, check=True)
    crls = run_cli("crl", "--json", data=data, check=True).json()  # one per trusted issuing CA
    assert isinstance(crls, list) and crls[0]["crl_number"] >= 1 and crls[0]["next_update"]
    exported = run_cli("audit", "export", "--json", data=data, check=True).stdout.splitlines()
    assert all(json.loads(line)["seq"] for line in exported)


def test_the_exit_codes_are_listed_once_in_the_runbook_and_mean_what_the_code_says() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert text.count("### Exit codes") == 1
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.M)}
    constants = {
        value for name, value in vars(common).items() if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == constants
    names = [n for n, v in vars(common).items() if n.startswith("EXIT_") and isinstance(v, int)]
    assert len(constants) == len(names)  # no two names for one code


def test_policy_explain_denial_is_not_the_apis_refusal() -> None:
    denied = run_cli("policy", "explain", "--id", "TRK-1", "--publish", "fleet/TRK-2/telemetry/gps")
    assert denied.code == common.EXIT_DENIED == 5 != common.EXIT_REFUSED
