"""Faults around the process at start: each one a clear sentence and a non-zero exit, never a
traceback or a crash loop, and nothing in the data directory changed."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pki.authority import CertificateAuthority
from pki.keys import generate_private_key, write_private_key, write_public_file
from tests.harness import INSECURE_KEYS, free_port, run_cli


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    assert run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=root).code == 0
    return root


def serve(data: Path) -> tuple[int, str]:
    result = run_cli(
        "serve",
        "--listen-mqtt",
        f"127.0.0.1:{free_port()}",
        "--listen-https",
        f"127.0.0.1:{free_port()}",
        data=data,
        timeout=30,
    )
    assert "Traceback" not in result.stderr
    return result.code, result.stderr


def test_a_world_readable_key_refuses_to_start(data: Path) -> None:
    os.chmod(data / "server" / "server.key", 0o644)
    code, err = serve(data)
    assert code == 1
    assert "chmod 600" in err and "server.key" in err


def test_a_missing_server_certificate_refuses_to_start(data: Path) -> None:
    (data / "server" / "server.crt").unlink()
    code, err = serve(data)
    assert code == 1
    assert "server certificate" in err and "missing" in err


def test_an_expired_server_certificate_refuses_to_start(data: Path) -> None:
    authority = CertificateAuthority.load(data / "ca")
    key = generate_private_key()
    past = datetime.now(UTC) - timedelta(days=400)
    from pki.names import make_identity
    from pki.profiles import build_certificate, leaf_subject, server_extensions

    identity = make_identity("gateway", "gateway", authority.trust_domain)
    cert = build_certificate(
        leaf_subject("gateway"),
        key.public_key(),
        authority.issuing.subject,
        authority.issuing_key,
        (past, past + timedelta(days=30)),
        server_extensions(identity, ["localhost"], key.public_key(), authority.issuing, None),
    )
    (data / "server" / "server.key").unlink()
    write_private_key(data / "server" / "server.key", key)
    write_public_file(data / "server" / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    code, err = serve(data)
    assert code == 1
    assert "expired" in err


def test_a_corrupt_database_is_one_sentence_not_a_crash(data: Path) -> None:
    (data / "fleetgate.db").write_bytes(b"\x00garbage" * 4096)
    for suffix in ("-wal", "-shm"):
        (data / f"fleetgate.db{suffix}").unlink(missing_ok=True)
    code, err = serve(data)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fleetgate.db" in last


def test_a_policy_that_could_touch_control_topics_refuses_to_start(data: Path, tmp_path: Path) -> None:
    from importlib import resources

    text = resources.files("gateway").joinpath("defaults/policy.yaml").read_text()
    head, sep, tail = text.partition("\nquarantine:")
    # a quarantine grant reaching into the control namespace (units may publish control acks normally)
    broken = (
        head
        + sep
        + tail.replace(
            '- "fleet/{id}/diag/#"', '- "fleet/{id}/diag/#"\n      - "fleet/{id}/control/+/ack"', 1
        )
    )
    assert broken != text
    policy = tmp_path / "policy.yaml"
    policy.write_text(broken)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"policy_file: {policy}\n")
    result = run_cli(
        "serve",
        "--config",
        str(config),
        "--listen-mqtt",
        f"127.0.0.1:{free_port()}",
        "--listen-https",
        f"127.0.0.1:{free_port()}",
        data=data,
        timeout=30,
    )
    assert result.code == 1
    assert "control" in result.stderr and "fleet/{id}/control/+/ack" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_busy_port_is_named(data: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "serve",
            "--listen-mqtt",
            f"127.0.0.1:{port}",
            "--listen-https",
            f"127.0.0.1:{free_port()}",
            data=data,
            timeout=30,
        )
    assert result.code == 1
    assert "cannot listen" in result.stderr
