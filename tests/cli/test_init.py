"""`fleetgate init` and the local registry commands, through the real CLI."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from tests.harness import INSECURE_KEYS, run_cli


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_ca_server_cert_and_registry_with_private_keys_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli(
        "init", "--trust-domain", "acme-fleet.example", "--hostname", "localhost", "--json", *INSECURE_KEYS,
        data=data,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    out = result.json()
    assert out["trust_domain"] == "acme-fleet.example"  # type: ignore[index]
    for key in ("ca/root.key", "ca/issuing.key", "server/server.key"):
        assert _mode(data / key) == 0o600, key
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(data / "ca/root.crt"),
            "-untrusted",
            str(data / "ca/issuing.crt"),
            str(data / "server/server.crt"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(data / "server/server.crt")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TLS Web Server Authentication" in text
    assert "DNS:localhost" in text
    assert "spiffe://acme-fleet.example/gateway/" in text


def test_init_twice_refuses_and_keeps_the_existing_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    root_before = (data / "ca/root.crt").read_bytes()
    again = run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data)
    assert again.code == 1
    assert "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (data / "ca/root.crt").read_bytes() == root_before


def test_commands_on_an_uninitialised_dir_say_how_to_fix_it(tmp_path: Path) -> None:
    result = run_cli("unit", "list", data=tmp_path / "nothing-here")
    assert result.code == 1
    assert result.stderr.startswith("error: ")
    assert "fleetgate init" in result.stderr


def test_corrupt_database_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    (data / "fleetgate.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (data / f"fleetgate.db{suffix}").unlink(missing_ok=True)
    result = run_cli("unit", "list", data=data)
    assert result.code == 1
    assert "Traceback" not in result.stderr
    assert "fleetgate.db" in result.stderr


def test_unit_add_list_show_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    added = run_cli("unit", "add", "TRK-00042", "--vin", "1FUJGLDR12LM12345", "--json", data=data)
    assert added.code == 0, added.stderr
    token = added.json()["token"]  # type: ignore[index]
    assert len(token) >= 22  # ≥ 128 bits, url-safe base64
    assert token not in (data / "fleetgate.db").read_bytes().decode("latin-1")  # only its hash is stored
    dup = run_cli("unit", "add", "TRK-00042", data=data)
    assert dup.code == 1 and "error:" in dup.stderr
    listed = run_cli("unit", "list", "--json", data=data).json()
    assert [u["unit"] for u in listed] == ["TRK-00042"]  # type: ignore[index,union-attr]
    assert listed[0]["state"] == "registered"  # type: ignore[index]
    shown = run_cli("unit", "show", "TRK-00042", "--json", data=data).json()
    assert shown["metadata"] == {"vin": "1FUJGLDR12LM12345"}  # type: ignore[index]
    assert run_cli("unit", "remove", "TRK-00042", data=data).code == 0
    assert run_cli("unit", "list", "--json", data=data).json() == []


def test_bad_unit_ids_are_refused_with_the_rule(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    for bad in ("TRK/1", "TRK+1", "#", ""):
        result = run_cli("unit", "add", bad, data=data)
        assert result.code != 0, bad
        assert "Traceback" not in result.stderr


def test_role_identities_get_keys_and_certificates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data).code == 0
    partner = run_cli(
        "partner", "add", "ACME", "--tier", "2", "--out", str(tmp_path / "p"), "--json", data=data
    )
    assert partner.code == 0, partner.stderr
    paths = partner.json()
    assert _mode(Path(paths["key"])) == 0o600  # type: ignore[index]
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", paths["cert"]],  # type: ignore[index]
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "URI:spiffe://fleet.local/partner/ACME" in text
    assert "TLS Web Client Authentication" in text
    for kind in ("operator", "service"):
        result = run_cli(kind, "add", f"{kind}-1", "--json", data=data)
        assert result.code == 0, result.stderr
    certs = run_cli("cert", "list", "--json", data=data).json()
    assert sorted(c["identity"] for c in certs) == [  # type: ignore[union-attr,index]
        "operator/operator-1",
        "partner/ACME",
        "service/service-1",
    ]
