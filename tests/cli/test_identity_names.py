"""Ids typed at the CLI are matched whole: `fleetgate unit add $'TRK-9\\n'` registers nothing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import INSECURE_KEYS, run_cli


def test_unit_add_refuses_an_id_with_a_trailing_newline(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data, check=True)
    refused = run_cli("unit", "add", "TRK-9\n", "--json", data=data)
    assert refused.code != 0
    assert "TRK-9\\n" in json.loads(refused.stderr)["error"]  # the id as typed, newline escaped
    listed = run_cli("unit", "list", "--json", data=data, check=True)
    assert "TRK-9" not in listed.stdout
    assert run_cli("unit", "add", "TRK-9", "--json", data=data).code == 0  # the plain id is fine


def test_init_refuses_a_trust_domain_with_a_trailing_newline(tmp_path: Path) -> None:
    refused = run_cli(
        "init", "--trust-domain", "fleet.local\n", "--hostname", "localhost", data=tmp_path / "d"
    )
    assert refused.code != 0
    assert "fleet.local\\n" in refused.stderr
