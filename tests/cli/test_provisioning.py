"""Provisioning at fleet scale: a thousand units from a CSV file, registered through the admin API and
enrolled over EST; a unit whose box is replaced; and the rules of a batch (all or nothing, a report
per row, tokens only to a 0600 file or to a program)."""

from __future__ import annotations

import csv
import json
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.cli.device import device_csr
from pki.est_client import EstServer, bootstrap, simpleenroll
from pki.keys import generate_private_key, write_private_key, write_public_file
from tests.clients import V5, Paho
from tests.harness import INSECURE_KEYS, Credentials, GatewayProcess, run_cli
from tests.ops.helpers import api

FLEET = 1000


def _profile(gateway: GatewayProcess, name: str, role: str) -> Path:
    creds = gateway.issue("operator", name, "--role", role, "--server", gateway.https_url)
    return creds.cert.parent / f"{name}.profile.json"


@pytest.fixture(scope="module")
def integrator(gateway: GatewayProcess) -> Path:
    return _profile(gateway, "factory", "integrator")


def _enroll(server: EstServer, unit_id: str, token: str) -> x509.Certificate:
    key = generate_private_key()
    return simpleenroll(server, unit_id, token, device_csr(key, unit_id))


def test_a_thousand_units_from_a_csv_are_registered_and_enrolled_over_est(
    gateway: GatewayProcess, integrator: Path, tmp_path: Path
) -> None:
    ids = [f"TRK-{n:05d}" for n in range(FLEET)]
    units = tmp_path / "units.csv"
    units.write_text("unit,vin\n" + "".join(f"{u},VIN{n:014d}\n" for n, u in enumerate(ids)))
    tokens = tmp_path / "tokens.csv"

    started = time.monotonic()
    added = run_cli("unit", "add", "--from-csv", str(units), "--tokens-out", str(tokens),
                    "--profile", str(integrator), timeout=300)  # fmt: skip
    registered_in = time.monotonic() - started
    assert added.code == 0, added.stderr
    assert f"Registered {FLEET} unit(s)" in added.stdout
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    with tokens.open() as handle:
        issued = {row["unit"]: row["token"] for row in csv.DictReader(handle)}
    assert sorted(issued) == ids

    server = bootstrap(gateway.https_url, ca_file=gateway.root_ca)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:  # as a factory line's stations would
        certs = list(pool.map(lambda u: _enroll(server, u, issued[u]), ids))
    enrolled_in = time.monotonic() - started
    print(f"registered {FLEET} units in {registered_in:.1f} s, enrolled them over EST in {enrolled_in:.1f} s")
    assert [c.subject.rfc4514_string() for c in certs] == [f"CN={u}" for u in ids]
    assert len({c.serial_number for c in certs}) == FLEET

    listed = run_cli("unit", "list", "--state", "enrolled", "-o", "name", "--profile", str(integrator))
    assert listed.code == 0, listed.stderr
    assert [u for u in listed.stdout.split() if u.startswith("TRK-0")] == ids
    soon = run_cli("unit", "list", "--expiring", "1d", "-o", "name", "--profile", str(integrator))
    assert soon.code == 0 and soon.stdout == ""  # fresh 30-day certificates
    month = run_cli("unit", "list", "--expiring", "31d", "-o", "json", "--profile", str(integrator))
    assert len([u for u in month.json() if u["unit"].startswith("TRK-0")]) == FLEET  # type: ignore[union-attr,index]

    # The API pages: 1000 units at 300 a page is four pages, the last one short.
    auditor = gateway.issue("operator", "reader", "--role", "auditor")
    status, page = api(gateway, auditor, "GET", "/api/units?state=enrolled&per_page=300&page=4")
    assert status == 200 and (page["page"], page["per_page"], page["pages"]) == (4, 300, 4)
    assert page["total"] >= FLEET and len(page["units"]) == page["total"] - 900
    status, page = api(gateway, auditor, "GET", "/api/units?state=quarantined,revoked&online=true")
    assert status == 200 and page["units"] == []


def test_a_replaced_box_enrolls_with_a_new_token_and_key_while_the_old_one_is_cut_off(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    ops = _profile(gateway, "olly", "ops")
    old: Credentials = gateway.enroll_unit("TRK-BOX")
    run_cli(
        "unit", "quarantine", "TRK-BOX", "--reason", "box swap pending", "--profile", str(ops), check=True
    )
    old_box = Paho(gateway.mqtt_port, old, version=V5)
    assert old_box.connect()[0] == 0

    replaced = run_cli("unit", "token", "TRK-BOX", "--replace", "--json", "--profile", str(ops))
    assert replaced.code == 0, replaced.stderr
    answer = replaced.json()
    assert isinstance(answer, dict) and len(answer["revoked_serials"]) == 1
    assert answer["revoked_serials"][0] == format(
        x509.load_pem_x509_certificate(old.cert.read_bytes()).serial_number, "x"
    )
    assert old_box.disconnects.get(timeout=5) == 0x87  # the old box's session is cut at once
    old_box.client.loop_stop()

    server = bootstrap(gateway.https_url, ca_file=gateway.root_ca)
    key = generate_private_key()
    cert = simpleenroll(server, "TRK-BOX", answer["token"], device_csr(key, "TRK-BOX"))
    new = Credentials("TRK-BOX", tmp_path / "new.crt", tmp_path / "new.key", gateway.root_ca)
    write_private_key(new.key, key)
    issuing = (gateway.data / "ca" / "issuing.crt").read_bytes()
    write_public_file(new.cert, cert.public_bytes(serialization.Encoding.PEM) + issuing)
    new_box = Paho(gateway.mqtt_port, new, version=V5)
    assert new_box.connect()[0] == 0  # the new box, its own key, the same unit
    new_box.client.disconnect()
    new_box.client.loop_stop()

    refused = Paho(gateway.mqtt_port, old, version=V5)
    with pytest.raises(Exception):  # noqa: B017 - a TLS alert or a reset, whichever comes first
        refused.connect(timeout=5)
    refused.client.loop_stop()
    shown = run_cli("unit", "show", "TRK-BOX", "--json", data=gateway.data, check=True).json()
    assert isinstance(shown, dict) and shown["state"] == "quarantined"  # the replacement kept the quarantine
    statuses = {c["serial"]: c["status"] for c in shown["certificates"]}
    assert sorted(statuses.values()) == ["revoked", "valid"]
    used = simpleenroll_refused(server, answer["token"])
    assert "used" in used  # the token was one-time


def simpleenroll_refused(server: EstServer, token: str) -> str:
    try:
        _enroll(server, "TRK-BOX", token)
    except Exception as exc:  # EstClientError: the server's sentence
        return str(exc)
    raise AssertionError("a used token enrolled again")


def test_the_api_refuses_a_bad_batch_whole_and_says_which_rows(
    gateway: GatewayProcess, integrator: Path
) -> None:
    creds = Credentials(
        "factory", *(integrator.parent / f"factory.{x}" for x in ("crt", "key")), gateway.root_ca
    )
    body = {"units": [{"unit": "TRK-NEW-1"}, {"unit": "TRK-00001"}, {"unit": "no way"}]}
    status, answer = api(gateway, creds, "POST", "/api/units", body)
    assert status == 422 and answer["code"] == "already_exists"
    assert [(r["row"], r["status"]) for r in answer["results"]] == [
        (1, "not_registered"), (2, "refused"), (3, "refused"),
    ]  # fmt: skip
    assert api(gateway, creds, "GET", "/api/units/TRK-NEW-1")[0] == 404  # nothing was registered
    status, answer = api(gateway, creds, "POST", "/api/units", {**body, "units": body["units"][:1]})
    assert status == 200 and answer["registered"] == 1 and answer["results"][0]["token"]
    status, answer = api(
        gateway, creds, "POST", "/api/units", {"units": [{"unit": f"X{n}"} for n in range(501)]}
    )
    assert (status, answer["code"]) == (400, "too_many_units")
    assert api(gateway, creds, "GET", "/api/units?per_page=5000")[0] == 400
    assert api(gateway, creds, "GET", "/api/units?expiring=soon")[0] == 400
    status, answer = api(gateway, creds, "POST", "/api/units/TRK-00001/quarantine", {"reason": "x"})
    assert (status, answer["code"]) == (403, "role_lacks_right")  # an integrator registers, nothing more


# --- the batch rules on a data dir -----------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root, check=True)
    return root


def test_a_batch_with_a_bad_row_registers_nothing_and_reports_every_row(data: Path, tmp_path: Path) -> None:
    units = tmp_path / "units.csv"
    units.write_text("\ufeffUnit,VIN\nTRK-1,VIN1\n\nbad id,\nTRK-1,\nTRK-2,VIN2\n")  # BOM, blank line
    report = run_cli("unit", "add", "--from-csv", str(units), "--json", data=data)
    assert report.code == 1
    rows = [(r["row"], r["unit"], r["status"], r["code"]) for r in report.json()["results"]]  # type: ignore[index]
    assert rows == [
        (2, "TRK-1", "not_registered", "batch_refused"),  # the lines of the file, to fix them there
        (4, "bad id", "refused", "invalid_id"),
        (5, "TRK-1", "refused", "duplicate_in_batch"),
        (6, "TRK-2", "not_registered", "batch_refused"),
    ]
    assert json.loads(report.stderr)["error"].startswith("nothing was registered: row 4 (bad id)")
    table = run_cli(
        "unit", "add", "--from-csv", str(units), "--tokens-out", str(tmp_path / "t.csv"), data=data
    )
    assert table.code == 1 and table.stdout.splitlines()[0].split() == [
        "ROW",
        "UNIT",
        "STATUS",
        "CODE",
        "ERROR",
    ]
    assert table.stderr.startswith("error: nothing was registered: row 4 (bad id)")
    assert not (tmp_path / "t.csv").exists()
    assert run_cli("unit", "list", "--json", data=data, check=True).json() == []


def test_tokens_go_to_a_new_0600_file_or_to_json_and_reruns_can_skip(data: Path, tmp_path: Path) -> None:
    units = tmp_path / "units.csv"
    units.write_text("id\nTRK-1\nTRK-2\n")
    no_file = run_cli("unit", "add", "--from-csv", str(units), data=data)
    assert no_file.code == 1 and "--tokens-out" in no_file.stderr  # never to a terminal table
    out = tmp_path / "tokens.json"
    done = run_cli("unit", "add", "--from-csv", str(units), "--tokens-out", str(out), data=data, check=True)
    assert "Registered 2 unit(s)" in done.stdout
    assert [t["unit"] for t in json.loads(out.read_text())] == ["TRK-1", "TRK-2"]
    again = run_cli("unit", "add", "--from-csv", str(units), "--tokens-out", str(out), data=data)
    assert again.code == 1 and "exists" in again.stderr  # an earlier file of tokens is never overwritten
    units.write_text("unit\nTRK-2\nTRK-3\n")
    refused = run_cli("unit", "add", "--from-csv", str(units), "--json", data=data)
    assert refused.code == 1 and json.loads(refused.stderr)["code"] == "already_exists"
    rerun = run_cli(
        "unit", "add", "--from-csv", str(units), "--json", "--skip-existing", data=data, check=True
    )
    report = rerun.json()
    assert isinstance(report, dict) and (report["registered"], report["exists"]) == (1, 1)
    assert [r["token"] is not None for r in report["results"]] == [False, True]
    bad = tmp_path / "bad.csv"
    bad.write_text("unit,colour\nTRK-9,red\n")
    header = run_cli("unit", "add", "--from-csv", str(bad), "--json", data=data)
    assert header.code == 1 and json.loads(header.stderr)["code"] == "bad_csv_header"
    assert run_cli("unit", "add", data=data).code == 2  # neither an id nor a file
