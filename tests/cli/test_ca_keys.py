"""The CA's keys at rest, through the real CLI: encrypted by default, a passphrase asked only by the
commands that sign, one sentence when there is none, and the root key taken off the host."""

from __future__ import annotations

from pathlib import Path

from tests.harness import INSECURE_KEYS, run_cli

SECRET = "correct horse battery"
ROOT_SECRET = "offline root staple"
CA_ENV = {"FLEETGATE_CA_PASSPHRASE": SECRET}
NO_PASSPHRASE = {"FLEETGATE_CA_PASSPHRASE": "", "FLEETGATE_ROOT_KEY_PASSPHRASE": ""}


def one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def init(data: Path, *extra: str, env: dict[str, str] | None = None) -> None:
    result = run_cli("init", "--hostname", "localhost", *extra, data=data, env=env or CA_ENV)
    assert result.code == 0, result.stderr


def test_init_without_a_passphrase_says_how_to_give_one_and_writes_nothing(tmp_path: Path) -> None:
    result = run_cli("init", "--hostname", "localhost", data=tmp_path / "data", env=NO_PASSPHRASE)
    assert result.code == 1
    assert one_sentence(result.stderr) == (
        "error: the CA keys are encrypted at rest and no passphrase was given: set FLEETGATE_CA_PASSPHRASE, "
        "run `fleetgate init` at a terminal to be asked for one, or pass --insecure-unencrypted-keys for a "
        "throwaway demo"
    )
    assert not (tmp_path / "data").exists()
    short = run_cli("init", data=tmp_path / "data", env={"FLEETGATE_CA_PASSPHRASE": "abc"})
    assert "shorter than 8 characters" in one_sentence(short.stderr)
    both = run_cli("init", *INSECURE_KEYS, data=tmp_path / "data", env=CA_ENV)
    assert "drop one of them" in one_sentence(both.stderr)
    assert not (tmp_path / "data").exists()


def test_the_ca_keys_are_encrypted_and_only_commands_that_sign_ask_for_the_passphrase(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init(data)
    for name in ("root.key", "issuing.key"):
        assert (data / "ca" / name).read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"), name
    # nothing signed: no passphrase needed
    assert run_cli("unit", "add", "TRK-1", data=data, env=NO_PASSPHRASE).code == 0
    assert run_cli("cert", "list", "--json", data=data, env=NO_PASSPHRASE).json() == []
    assert run_cli("ca", "status", data=data, env=NO_PASSPHRASE).code == 0
    # a signature: refused in one sentence, and nothing changed
    refused = run_cli(
        "operator", "add", "alice", "--out", str(tmp_path / "alice"), data=data, env=NO_PASSPHRASE
    )
    assert refused.code == 1
    assert one_sentence(refused.stderr) == (
        f"error: {data / 'ca' / 'issuing.key'} is encrypted; set FLEETGATE_CA_PASSPHRASE to its passphrase, "
        "or run this command at a terminal to be asked for it"
    )
    assert run_cli("cert", "list", "--json", data=data, env=NO_PASSPHRASE).json() == []
    wrong = run_cli("crl", data=data, env={"FLEETGATE_CA_PASSPHRASE": "not the one at all"})
    assert "check the passphrase" in one_sentence(wrong.stderr)
    issued = run_cli("operator", "add", "alice", "--out", str(tmp_path / "alice"), data=data, env=CA_ENV)
    assert issued.code == 0, issued.stderr


def test_init_for_a_demo_writes_plain_keys_and_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=data, env=NO_PASSPHRASE)
    assert result.code == 0
    assert "warning: the CA keys are written without a passphrase" in result.stderr
    assert (data / "ca" / "issuing.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert run_cli("operator", "add", "bob", "--out", str(tmp_path / "bob"), data=data).code == 0


def test_the_root_key_goes_offline_only_once_its_copy_opens(tmp_path: Path) -> None:
    data, copy = tmp_path / "data", tmp_path / "usb" / "fleet-root.key"
    copy.parent.mkdir()
    init(data)
    unprotected = run_cli(
        "ca", "export-root-key", str(copy), data=data, env={**CA_ENV, **{"FLEETGATE_ROOT_KEY_PASSPHRASE": ""}}
    )
    assert "FLEETGATE_ROOT_KEY_PASSPHRASE" in one_sentence(unprotected.stderr) and not copy.exists()
    root_env = {**CA_ENV, "FLEETGATE_ROOT_KEY_PASSPHRASE": ROOT_SECRET}
    exported = run_cli("ca", "export-root-key", str(copy), "--json", data=data, env=root_env)
    assert exported.code == 0, exported.stderr
    assert copy.stat().st_mode & 0o777 == 0o600
    assert copy.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    again = run_cli("ca", "export-root-key", str(copy), data=data, env=root_env)
    assert "already exists" in one_sentence(again.stderr)

    stranger = tmp_path / "stranger.key"
    init(tmp_path / "other", "--trust-domain", "other.example")
    run_cli("ca", "export-root-key", str(stranger), data=tmp_path / "other", env=root_env)
    wrong = run_cli("ca", "remove-root-key", "--copy", str(stranger), data=data, env=root_env)
    assert "does not hold this CA's root key" in one_sentence(wrong.stderr)
    assert (data / "ca" / "root.key").exists()

    removed = run_cli("ca", "remove-root-key", "--copy", str(copy), data=data, env=root_env)
    assert removed.code == 0, removed.stderr
    assert not (data / "ca" / "root.key").exists()
    status = run_cli("ca", "status", "--json", data=data, env=NO_PASSPHRASE).json()
    assert status["root"]["key"] == "offline"  # type: ignore[index]
    actions = run_cli("events", "--json", data=data).stdout
    assert "ca.root_key_exported" in actions and "ca.root_key_removed" in actions
