"""Operator second factor over real mTLS: sensitive admin actions need a TOTP code from an enrolled
operator; missing, wrong and reused codes are refused and audited; the CLI passes --totp CODE; the
secret never appears in the audit log, the gateway log or the command's output beyond enrollment."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from gateway.admin.totp import code_at, secret_from_base32
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import audit_records, context


def call(gw: GatewayProcess, creds: Credentials, path: str, body: Any, totp: str | None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"X-Fleetgate-TOTP": totp} if totp else {})}
    request = urllib.request.Request(
        gw.https_url + path, data=json.dumps(body).encode(), method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, context=context(gw, creds), timeout=15) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


@pytest.fixture(scope="module")
def enrolled(gateway: GatewayProcess) -> tuple[Credentials, bytes, dict[str, Any]]:
    out = gateway.clients / "operator"
    result = gateway.cli(
        "operator",
        "add",
        "mfa",
        "--role",
        "security",
        "--totp",
        "--server",
        gateway.https_url,
        "--out",
        str(out),
        "--json",
        check=True,
    )
    data = result.json()
    assert isinstance(data, dict)
    secret_text = parse_qs(urlparse(data["totp_uri"]).query)["secret"][0]
    creds = Credentials("mfa", Path(data["cert"]), Path(data["key"]), Path(data["ca"]))
    return creds, secret_from_base32(secret_text), data


def test_enrollment_gives_a_uri_and_qr_once_and_keeps_the_secret_private(
    gateway: GatewayProcess, enrolled: tuple[Credentials, bytes, dict[str, Any]]
) -> None:
    _, _, data = enrolled
    assert data["totp_uri"].startswith("otpauth://totp/") and data["totp"] == "enrolled"
    qr = Path(data["totp_qr"])
    assert qr.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    secret_file = gateway.data / "totp" / "mfa.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((gateway.data / "totp").stat().st_mode) == 0o700


def test_sensitive_actions_need_a_valid_single_use_code(
    gateway: GatewayProcess, enrolled: tuple[Credentials, bytes, dict[str, Any]]
) -> None:
    creds, secret, data = enrolled
    status, body = call(gateway, creds, "/api/policy/reload", {}, None)
    assert (status, body["code"]) == (401, "totp_required")
    wrong = code_at(secret, time.time() + 3600)  # a real code, of another hour
    status, body = call(gateway, creds, "/api/units/TRK-NONE/release", {}, wrong)
    assert (status, body["code"]) == (401, "totp_bad_code")
    code = code_at(secret, time.time())
    status, body = call(gateway, creds, "/api/policy/reload", {}, code)
    assert status == 200 and body["reloaded"] is True
    status, body = call(gateway, creds, "/api/policy/reload", {}, code)  # the same code again
    assert (status, body["code"]) == (401, "totp_replayed")
    # the CLI passes --totp; a code of the next 30 s step is still inside the accepted skew
    profile = str(Path(data["profile"]))
    refused = gateway.cli("partner", "disconnect", "nobody", "--dry-run", "--profile", profile)
    assert refused.code != 0 and "TOTP" in refused.stderr
    ok = gateway.cli(
        "partner",
        "disconnect",
        "nobody",
        "--dry-run",
        "--json",
        "--profile",
        profile,
        "--totp",
        code_at(secret, time.time() + 30),
    )
    assert ok.code in (0, 1, 3, 4) and "totp" not in ok.stderr.lower(), ok.stderr  # past the second factor
    records = [r for r in audit_records(gateway, 0.3) if r["action"] == "admin.second_factor"]
    reasons = [(r["outcome"], r["reason"]) for r in records if r["actor"] == "operator/mfa"]
    assert ("refused", "totp_required") in reasons and ("refused", "totp_bad_code") in reasons
    assert ("refused", "totp_replayed") in reasons and ("ok", "ok") in reasons
    secret_text = parse_qs(urlparse(data["totp_uri"]).query)["secret"][0]
    everything = json.dumps(audit_records(gateway)) + gateway.log()
    assert secret_text not in everything and code not in json.dumps(records)


def test_reads_need_no_code(
    gateway: GatewayProcess, enrolled: tuple[Credentials, bytes, dict[str, Any]]
) -> None:
    creds, _, _ = enrolled
    request = urllib.request.Request(gateway.https_url + "/api/units", method="GET")
    with urllib.request.urlopen(request, context=context(gateway, creds), timeout=15) as response:
        assert response.status == 200


def _secret_of(result: Any) -> bytes:
    data = result.json()
    assert isinstance(data, dict)
    return secret_from_base32(parse_qs(urlparse(data["totp_uri"]).query)["secret"][0])


def test_an_operator_without_a_second_factor_is_refused_sensitive_rights(gateway: GatewayProcess) -> None:
    """Security review finding 8: carol (ops, no TOTP) released a unit with her certificate alone."""
    carol = gateway.issue("operator", "carol", "--role", "ops", "--server", gateway.https_url)
    gateway.add_unit("TRK-HELD")
    assert gateway.cli("quarantine", "TRK-HELD", "--reason", "tampering").code == 0
    status, body = call(gateway, carol, "/api/units/TRK-HELD/release", {}, None)
    assert (status, body["code"]) == (403, "totp_not_enrolled")
    assert "fleetgate operator totp carol" in body["error"] and body["error"].count(". ") == 0
    status, body = call(gateway, carol, "/api/units/TRK-HELD/release", {}, "123456")  # a code is no help
    assert (status, body["code"]) == (403, "totp_not_enrolled")
    shown = gateway.cli("unit", "show", "TRK-HELD", "--json")
    assert json.loads(shown.stdout)["state"] == "quarantined"  # nothing was done
    refused = [
        r
        for r in audit_records(gateway, 0.3)
        if r["action"] == "admin.second_factor" and r["actor"] == "operator/carol"
    ]
    assert {(r["outcome"], r["reason"]) for r in refused} == {("refused", "totp_not_enrolled")}
    # Enrolling an existing operator needs no new certificate; the registry records it.
    enrolled = gateway.cli("operator", "totp", "carol", "--out", str(gateway.clients / "operator"), "--json")
    assert enrolled.code == 0, enrolled.stderr
    secret = _secret_of(enrolled)
    status, body = call(gateway, carol, "/api/units/TRK-HELD/release", {}, code_at(secret, time.time()))
    assert status == 200 and body["changed"] is True, body
    assert any(
        r["action"] == "operator.totp" and r["subject"] == "operator/carol" for r in audit_records(gateway)
    )


def test_an_enrolled_operator_whose_secret_is_missing_is_refused_and_logged(gateway: GatewayProcess) -> None:
    result = gateway.cli(
        "operator", "add", "dora", "--role", "security", "--totp", "--server", gateway.https_url,
        "--out", str(gateway.clients / "operator"), "--json", check=True,
    )  # fmt: skip
    data = result.json()
    assert isinstance(data, dict)
    dora = Credentials("dora", Path(data["cert"]), Path(data["key"]), Path(data["ca"]))
    secret = _secret_of(result)
    secret_file = gateway.data / "totp" / "dora.secret"
    kept = secret_file.read_bytes()
    secret_file.unlink()  # a partial restore, a slip of the hand: the registry still says enrolled
    status, body = call(gateway, dora, "/api/policy/reload", {}, code_at(secret, time.time()))
    assert (status, body["code"]) == (503, "totp_secret_missing")
    logged = "operator dora is enrolled for TOTP in the registry but DATA/totp/dora.secret is missing"
    assert logged in gateway.log()
    secret_file.write_bytes(kept)
    secret_file.chmod(0o600)
    status, body = call(gateway, dora, "/api/policy/reload", {}, code_at(secret, time.time()))
    assert status == 200 and body["reloaded"] is True


def test_a_lockout_survives_a_gateway_restart(fresh_gateway: GatewayProcess) -> None:
    """Security review finding 20: failures and lockouts lived in memory, so a restart cleared them."""
    gw = fresh_gateway
    result = gw.cli(
        "operator", "add", "eve", "--role", "security", "--totp", "--server", gw.https_url,
        "--out", str(gw.clients / "operator"), "--json", check=True,
    )  # fmt: skip
    data = result.json()
    assert isinstance(data, dict)
    eve = Credentials("eve", Path(data["cert"]), Path(data["key"]), Path(data["ca"]))
    secret = _secret_of(result)
    wrong = code_at(secret, time.time() + 3600)
    answers = [call(gw, eve, "/api/policy/reload", {}, wrong)[1]["code"] for _ in range(5)]
    assert answers == ["totp_bad_code"] * 5
    assert call(gw, eve, "/api/policy/reload", {}, code_at(secret, time.time()))[0] == 429
    gw.restart()
    status, body = call(gw, eve, "/api/policy/reload", {}, code_at(secret, time.time() + 30))
    assert (status, body["code"]) == (429, "totp_locked_out")  # still locked after the restart
