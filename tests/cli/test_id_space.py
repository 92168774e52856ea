"""One id space for every client kind, through the real CLI: `* add` refuses an id another kind holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import INSECURE_KEYS, run_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("ids") / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data, check=True)
    run_cli("unit", "add", "TRK-1", data=data, check=True)
    run_cli("partner", "add", "ACME", "--tier", "2", "--out", str(data.parent / "ids"), data=data, check=True)
    return data


@pytest.mark.parametrize(
    ("command", "holder"),
    [
        (("partner", "add", "TRK-1", "--tier", "3"), "unit"),
        (("operator", "add", "TRK-1", "--role", "auditor"), "unit"),
        (("service", "add", "TRK-1"), "unit"),
        (("unit", "add", "ACME"), "partner"),
    ],
)
def test_an_id_held_by_another_kind_is_refused_in_one_sentence(
    data: Path, command: tuple[str, ...], holder: str
) -> None:
    kind, ident = command[0], command[2]
    out = ("--out", str(data.parent / "out")) if kind != "unit" else ()
    result = run_cli(*command, *out, data=data)
    assert result.code == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {holder} {ident} already holds the id {ident}, and units, operators, services and partners "
        f"share one id space; pick another id for the {kind}"
    )
    units = run_cli("unit", "list", "--json", data=data, check=True).json()
    certificates = run_cli("cert", "list", "--json", data=data, check=True).json()
    assert [u["unit"] for u in units] == ["TRK-1"]  # type: ignore[union-attr,index]
    assert [c["identity"] for c in certificates] == ["partner/ACME"]  # type: ignore[union-attr,index]
    assert not (data.parent / "out" / f"{ident}.key").exists()
