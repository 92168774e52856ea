"""`fleetgate ca rotate | status | retire` on a data dir, checked with openssl: the overlap, the
re-issued server certificate, one CRL per issuing CA, and a retirement refused while in use."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import INSECURE_KEYS, run_cli


def openssl_verify(*args: str | Path) -> str:
    result = subprocess.run(
        ["openssl", "verify", *map(str, args)], capture_output=True, text=True, check=False
    )
    return result.stdout + result.stderr


def subject_of(path: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def issue_operator(data: Path, name: str, out: Path) -> Path:
    result = run_cli("operator", "add", name, "--out", str(out), "--json", data=data)
    assert result.code == 0, result.stderr
    return Path(result.json()["cert"])  # type: ignore[index]


def test_rotate_overlap_and_retire(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli("init", "--hostname", "gw.example", *INSECURE_KEYS, data=data).code == 0
    ca = data / "ca"
    before = issue_operator(data, "alice", tmp_path / "before")
    old_names = subject_of(data / "server" / "server.crt")

    rotated = run_cli("ca", "rotate", "--json", data=data)
    assert rotated.code == 0, rotated.stderr
    facts = rotated.json()
    assert isinstance(facts, dict)
    assert (facts["generation"], facts["previous"]) == (2, 1)
    assert facts["hostnames"][:2] == ["gw.example", "localhost"]
    # the server certificate now comes from issuing CA 2 and still chains to the same root
    server = data / "server" / "server.crt"
    assert (
        "issuing CA 2"
        in subprocess.run(
            ["openssl", "x509", "-noout", "-issuer", "-in", str(server)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert subject_of(server) == old_names
    assert ": OK" in openssl_verify("-CAfile", ca / "root.crt", "-untrusted", ca / "issuing.crt", server)
    # the overlap: the old certificate and a new one both verify against the client CA bundle
    after = issue_operator(data, "bob", tmp_path / "after")
    assert ": OK" in openssl_verify("-CAfile", ca / "client-ca.pem", before)
    assert ": OK" in openssl_verify("-CAfile", ca / "client-ca.pem", after)
    crls = run_cli("crl", data=data).stdout
    assert crls.count("BEGIN X509 CRL") == 2  # one per trusted issuing CA, each signed by its own key
    bundle = tmp_path / "crls.pem"
    bundle.write_text(crls)
    assert ": OK" in openssl_verify("-crl_check", "-CAfile", ca / "client-ca.pem", "-CRLfile", bundle, before)

    status = run_cli("ca", "status", "--json", data=data).json()
    assert isinstance(status, dict)
    rows = {row["generation"]: row for row in status["issuing"]}
    assert (rows[1]["state"], rows[1]["in_use"], rows[1]["in_use_by_kind"]) == ("trusted", 1, {"operator": 1})
    assert (rows[2]["state"], rows[2]["in_use"]) == ("issuing", 1)
    assert status["root"]["key"] == "on this host, NOT encrypted"
    table = run_cli("ca", "status", data=data)
    assert table.code == 0 and "1 (1 operator)" in table.stdout

    refused = run_cli("ca", "retire", "1", data=data)
    assert refused.code == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(
        "error: 1 certificate(s) in use were issued by issuing CA 1 (e.g. operator/alice); wait until they"
    )
    current = run_cli("ca", "retire", "2", data=data)
    assert "issuing CA 2 is the one that issues" in current.stderr

    reissued = issue_operator(data, "alice", tmp_path / "reissued")  # alice moves to issuing CA 2
    retired = run_cli("ca", "retire", "1", "--json", data=data)
    assert retired.code == 0, retired.stderr
    assert retired.json() == {"generation": 1, "revoked": 1, "forced_in_use": 0}
    # the retired CA is gone from the bundle other servers trust
    assert "unable to get local issuer certificate" in openssl_verify("-CAfile", ca / "client-ca.pem", before)
    assert ": OK" in openssl_verify("-CAfile", ca / "client-ca.pem", reissued)
    assert not any(ca.glob("issuing-1.*"))
    assert run_cli("crl", data=data).stdout.count("BEGIN X509 CRL") == 1
    status = run_cli("ca", "status", "--json", data=data).json()
    assert [r["state"] for r in status["issuing"]] == ["retired", "issuing"]  # type: ignore[index]
    shown = run_cli("cert", "show", format(_serial(before), "x"), "--json", data=data).json()
    assert (shown["status"], shown["revocation_reason"]) == ("revoked", "superseded")  # type: ignore[index]
    assert run_cli("audit", "verify", data=data).code == 0


def _serial(path: Path) -> int:
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(text.strip().split("=")[1], 16)
