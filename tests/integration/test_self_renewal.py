"""Operators, services and partners are issued by an operator; over EST they renew only as
`certificates.self_renewal` allows their kind. With nothing but openssl and curl, as in
test_est.py: by default their `simplereenroll` is refused (403, one sentence, audited with the
reason), `bounded` renews without outliving the issued certificate, and units renew as always.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness import Credentials, GatewayProcess, run_cli
from tests.ops.helpers import audit_records


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("renewal")
    config = root / "gateway.yaml"
    # Renewals ask for 400 days, longer than the 365 an operator gives a role identity: "bounded" bites.
    config.write_text(
        "certificates:\n  unit_lifetime_days: 400\n  self_renewal:\n    service: bounded\n"  # others: default
    )
    gateway = GatewayProcess(root, extra_args=("--config", str(config)))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


def sh(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(a) for a in args], capture_output=True, timeout=60)


def reenroll_with_curl(gw: GatewayProcess, creds: Credentials, tmp: Path) -> tuple[int, bytes]:
    """simplereenroll with the holder's certificate over mTLS and a fresh key made by openssl."""
    key = tmp / f"{creds.ident}.new.key"
    assert (
        sh(
            "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key
        ).returncode
        == 0
    )
    der = sh("openssl", "req", "-new", "-key", key, "-subj", f"/CN={creds.ident}", "-outform", "DER")
    assert der.returncode == 0, der.stderr
    body = tmp / f"{creds.ident}.csr.b64"
    body.write_bytes(base64.encodebytes(der.stdout))
    out = sh(
        "curl", "-s", "-S", "--cacert", gw.root_ca, "--cert", creds.cert, "--key", creds.key,
        "-H", "Content-Type: application/pkcs10", "--data-binary", f"@{body}", "-w", "\n%{http_code}",
        f"{gw.https_url}/.well-known/est/simplereenroll",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answer, _, code = out.stdout.rpartition(b"\n")
    return int(code), answer


def issued_leaf(answer: bytes, tmp: Path) -> x509.Certificate:
    p7 = tmp / "answer.p7"
    p7.write_bytes(base64.b64decode(answer))
    pem = sh("openssl", "pkcs7", "-inform", "DER", "-in", p7, "-print_certs")
    assert pem.returncode == 0, pem.stderr
    return x509.load_pem_x509_certificate(pem.stdout)


def not_after(creds: Credentials) -> datetime:
    return x509.load_pem_x509_certificate(creds.cert.read_bytes()).not_valid_after_utc


@pytest.mark.parametrize(
    ("kind", "extra"), [("operator", ("--role", "auditor")), ("partner", ("--tier", "3"))]
)
def test_operators_and_partners_cannot_renew_themselves_by_default(
    gw: GatewayProcess, tmp_path: Path, kind: str, extra: tuple[str, ...]
) -> None:
    creds = gw.issue(kind, f"self-{kind}", *extra)
    code, message = reenroll_with_curl(gw, creds, tmp_path)
    assert code == 403, message
    assert message.count(b"\n") == 1 and b"Traceback" not in message
    text = message.decode()
    assert "not renewed over EST" in text and f"fleetgate {kind} add self-{kind}" in text
    assert any(
        r["action"] == "est.reenroll" and r["outcome"] == "refused" and r["reason"] == "self_renewal_refused"
        and r["actor"] == f"{kind}/self-{kind}"
        for r in audit_records(gw, wait=0.2)
    )  # fmt: skip
    listed = gw.cli("cert", "list", "--kind", kind, "--id", f"self-{kind}", "--json")
    assert len(listed.json()) == 1  # type: ignore[arg-type]  # nothing was issued
    # The CLI a holder would use says the same, with exit status 1.
    renew = run_cli("renew", "--cert", str(creds.cert), "--key", str(creds.key),
                    "--server", gw.https_url, "--ca", str(gw.root_ca))  # fmt: skip
    assert renew.code == 1
    assert renew.stderr.startswith("error: ") and "not renewed over EST" in renew.stderr


def test_a_bounded_service_renews_but_never_past_its_issued_expiry(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    creds = gw.issue("service", "rotating")
    code, answer = reenroll_with_curl(gw, creds, tmp_path)
    assert code == 200, answer
    renewed = issued_leaf(answer, tmp_path)
    assert renewed.not_valid_after_utc == not_after(creds)  # not 400 days from now
    shown = gw.cli("cert", "show", format(renewed.serial_number, "x"), "--json").json()
    assert shown["renewed_from"] == format(
        x509.load_pem_x509_certificate(creds.cert.read_bytes()).serial_number, "x"
    )  # type: ignore[index]


def test_units_still_renew(gw: GatewayProcess, tmp_path: Path) -> None:
    unit = gw.enroll_unit("TRK-RENEWS")
    code, answer = reenroll_with_curl(gw, unit, tmp_path)
    assert code == 200, answer
    renewed = issued_leaf(answer, tmp_path)
    assert renewed.serial_number != x509.load_pem_x509_certificate(unit.cert.read_bytes()).serial_number
