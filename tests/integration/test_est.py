"""EST enrollment against a live gateway: with openssl + curl, with our CLI, and with bad input."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from tests.harness import GatewayProcess, run_cli


def sh(*args: str, input_bytes: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), capture_output=True, input=input_bytes, timeout=60)


def curl(gw: GatewayProcess, path: str, *extra: str) -> tuple[int, bytes]:
    out = sh(
        "curl",
        "-s",
        "-S",
        "--cacert",
        str(gw.root_ca),
        "-w",
        "\n%{http_code}",
        *extra,
        f"{gw.https_url}{path}",
    )
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition(b"\n")
    return int(code), body


def openssl_csr(
    tmp: Path,
    cn: str,
    key_spec: tuple[str, ...] = ("-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
) -> Path:
    key = tmp / f"{cn}.key"
    assert sh("openssl", "genpkey", *key_spec, "-out", str(key)).returncode == 0
    der = sh("openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={cn}", "-outform", "DER")
    assert der.returncode == 0, der.stderr
    body = tmp / f"{cn}.csr.b64"
    body.write_bytes(base64.encodebytes(der.stdout))
    return body


def test_a_unit_enrolls_with_nothing_but_openssl_and_curl(gateway: GatewayProcess, tmp_path: Path) -> None:
    token = gateway.add_unit("TRK-CURL-1")
    code, cacerts = curl(gateway, "/.well-known/est/cacerts")
    assert code == 200
    body = openssl_csr(tmp_path, "TRK-CURL-1")
    code, answer = curl(
        gateway,
        "/.well-known/est/simpleenroll",
        "-u",
        f"TRK-CURL-1:{token}",
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        f"@{body}",
    )
    assert code == 200, answer
    p7 = tmp_path / "cert.p7"
    p7.write_bytes(base64.b64decode(answer))
    leaf = tmp_path / "unit.crt"
    assert (
        sh("openssl", "pkcs7", "-inform", "DER", "-in", str(p7), "-print_certs", "-out", str(leaf)).returncode
        == 0
    )
    chain = tmp_path / "cacerts.p7"
    chain.write_bytes(base64.b64decode(cacerts))
    bundle = sh("openssl", "pkcs7", "-inform", "DER", "-in", str(chain), "-print_certs").stdout
    assert bundle.count(b"BEGIN CERTIFICATE") == 2
    issuing = gateway.data / "ca" / "issuing.crt"
    verify = sh("openssl", "verify", "-CAfile", str(gateway.root_ca), "-untrusted", str(issuing), str(leaf))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = sh("openssl", "x509", "-noout", "-text", "-in", str(leaf)).stdout.decode()
    assert "URI:spiffe://fleet.local/unit/TRK-CURL-1" in text
    assert "TLS Web Client Authentication" in text
    assert "Digital Signature" in text
    assert "CA:FALSE" in text


def test_a_token_works_exactly_once(gateway: GatewayProcess, tmp_path: Path) -> None:
    token = gateway.add_unit("TRK-ONCE")
    body = openssl_csr(tmp_path, "TRK-ONCE")
    args = ("-u", f"TRK-ONCE:{token}", "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}")
    first, _ = curl(gateway, "/.well-known/est/simpleenroll", *args)
    second, message = curl(gateway, "/.well-known/est/simpleenroll", *args)
    assert first == 200
    assert second in (401, 403)
    assert b"used" in message.lower()
    assert message.count(b"\n") == 1  # one line


@pytest.mark.parametrize(
    ("case", "expected_status", "expected_words"),
    [
        ("wrong_token", 401, b"token"),
        ("other_units_token", 403, b"token"),
        ("csr_names_another_unit", 403, b"csr"),
        ("garbage_base64", 400, b"base64"),
        ("rsa_1024", 400, b"weak"),
        ("no_credentials", 401, b"credentials"),
    ],
)
def test_bad_enrollments_get_a_specific_one_line_refusal(
    gateway: GatewayProcess, tmp_path: Path, case: str, expected_status: int, expected_words: bytes
) -> None:
    unit = f"TRK-BAD-{case}".replace("_", "-")[:40]
    token = gateway.add_unit(unit)
    cn = "TRK-SOMEONE-ELSE" if case == "csr_names_another_unit" else unit
    spec = ("-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024") if case == "rsa_1024" else None
    body = openssl_csr(tmp_path, cn, spec) if spec else openssl_csr(tmp_path, cn)
    if case == "garbage_base64":
        body.write_bytes(b"!!! this is not base64 at all !!!")
    auth = {"wrong_token": f"{unit}:not-the-token", "other_units_token": f"TRK-NOT-{unit}:{token}"}.get(
        case, f"{unit}:{token}"
    )
    if case == "other_units_token":
        gateway.add_unit(f"TRK-NOT-{unit}")
    args = ["-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}"]
    if case != "no_credentials":
        args += ["-u", auth]
    code, message = curl(gateway, "/.well-known/est/simpleenroll", *args)
    assert code == expected_status, message
    assert expected_words in message.lower(), message
    assert message.count(b"\n") == 1
    assert b"Traceback" not in message
    # nothing changed: the unit is still only registered, its token still unused
    shown = gateway.cli("unit", "show", unit, "--json").json()
    assert shown["state"] == "registered"  # type: ignore[index]


def test_an_oversize_body_is_refused_without_reading_it_all(gateway: GatewayProcess, tmp_path: Path) -> None:
    token = gateway.add_unit("TRK-HUGE")
    huge = tmp_path / "huge"
    huge.write_bytes(b"A" * (2 * 1024 * 1024))
    code, message = curl(
        gateway, "/.well-known/est/simpleenroll", "-u", f"TRK-HUGE:{token}", "--data-binary", f"@{huge}"
    )
    assert code == 413
    assert b"larger than" in message


def test_cli_enroll_renew_and_revoked_cannot_renew(gateway: GatewayProcess, tmp_path: Path) -> None:
    token = gateway.add_unit("TRK-CLI-1")
    out = tmp_path / "TRK-CLI-1"
    enrolled = run_cli(
        "enroll",
        "--server",
        gateway.https_url,
        "--unit",
        "TRK-CLI-1",
        "--token",
        token,
        "--ca-sha256",
        gateway.root_sha256(),
        "--out",
        str(out),
        "--json",
    )
    assert enrolled.code == 0, enrolled.stderr
    paths = enrolled.json()
    assert (Path(paths["key"]).stat().st_mode & 0o777) == 0o600  # type: ignore[index]
    first_serial = paths["serial"]  # type: ignore[index]
    renewed = run_cli("renew", "--cert", paths["cert"], "--key", paths["key"], "--json")  # type: ignore[index]
    assert renewed.code == 0, renewed.stderr
    second_serial = renewed.json()["serial"]  # type: ignore[index]
    assert second_serial != first_serial
    revoke = gateway.cli("cert", "revoke", second_serial, "--reason", "keyCompromise", "--force")
    assert revoke.code == 0, revoke.stderr
    again = run_cli("renew", "--cert", paths["cert"], "--key", paths["key"])  # type: ignore[index]
    assert again.code == 1
    assert "revoked" in again.stderr.lower()


def test_cli_enroll_refuses_a_wrong_fingerprint(gateway: GatewayProcess, tmp_path: Path) -> None:
    token = gateway.add_unit("TRK-PIN")
    result = run_cli(
        "enroll",
        "--server",
        gateway.https_url,
        "--unit",
        "TRK-PIN",
        "--token",
        token,
        "--ca-sha256",
        "00" * 32,
        "--out",
        str(tmp_path / "x"),
    )
    assert result.code == 1
    assert "fingerprint" in result.stderr


def test_revoked_serial_is_in_the_served_crl_which_verifies(gateway: GatewayProcess, tmp_path: Path) -> None:
    creds = gateway.enroll_unit("TRK-CRL-1")
    serial = (
        sh("openssl", "x509", "-noout", "-serial", "-in", str(creds.cert))
        .stdout.decode()
        .split("=")[1]
        .strip()
    )
    assert gateway.cli("cert", "revoke", serial, "--reason", "keyCompromise", "--force").code == 0
    code, der = curl(gateway, "/crl")
    assert code == 200
    crl = tmp_path / "crl.der"
    crl.write_bytes(der)
    issuing = gateway.data / "ca" / "issuing.crt"
    checked = sh(
        "openssl", "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(issuing), "-noout", "-text"
    )
    assert checked.returncode == 0, checked.stderr
    text = checked.stdout.decode()
    assert serial.upper().lstrip("0") in text.replace(":", "").upper()
    assert "Key Compromise" in text
    verified = sh("openssl", "crl", "-inform", "DER", "-in", str(crl), "-CAfile", str(issuing), "-noout")
    assert b"verify OK" in verified.stdout + verified.stderr
