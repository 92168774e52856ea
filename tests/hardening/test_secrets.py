"""No private key and no enrollment token ever appears in a log, an audit record, an error or `--json`.

A full run: units registered and enrolled, a token reused, a wrong token, a bad CSR, identities issued,
quarantine and release, a revocation, status and listings — every output kept, then all of it (plus
the gateway's log and the audit export) searched for PEM private-key blocks and for every token value.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from gateway.cli.device import device_csr
from pki.est_client import EstClientError, bootstrap, simpleenroll
from pki.keys import generate_private_key
from tests.hardening.common import record_figure
from tests.harness import GatewayProcess

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def test_no_secret_in_logs_audit_errors_or_json(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path)
    gw.init()
    gw.start()
    outputs: list[str] = []
    tokens: list[str] = []
    try:

        def cli(*args: str) -> None:
            result = gw.cli(*args)
            outputs.extend([result.stdout, result.stderr])

        for unit in ("TRK-S1", "TRK-S2", "TRK-S3"):
            added = gw.cli("unit", "add", unit, "--json", check=True)
            outputs.append(added.stderr)  # stdout carries the token by design (shown once, to ops)
            tokens.append(str(added.json()["token"]))  # type: ignore[index]
        server = bootstrap(gw.https_url, ca_file=gw.root_ca)
        simpleenroll(server, "TRK-S1", tokens[0], device_csr(generate_private_key(), "TRK-S1"))
        for unit, token, csr_unit in (
            ("TRK-S1", tokens[0], "TRK-S1"),  # reused
            ("TRK-S2", tokens[2], "TRK-S2"),  # another unit's token
            ("TRK-S2", tokens[1], "TRK-EVIL"),  # CSR for someone else
            ("TRK-S3", tokens[2] + "x", "TRK-S3"),  # wrong
        ):
            try:
                simpleenroll(server, unit, token, device_csr(generate_private_key(), csr_unit))
                outputs.append("unexpected success")
            except EstClientError as exc:
                outputs.append(str(exc))
        cli("service", "add", "analytics", "--json", "--out", str(tmp_path / "ids"))
        cli("partner", "add", "ACME", "--tier", "2", "--json")
        cli("quarantine", "TRK-S1", "--reason", "secrets test", "--json")
        cli("release", "TRK-S1", "--json")
        cli("unit", "list", "--json")
        cli("unit", "show", "TRK-S1", "--json")
        cli("cert", "list", "--json")
        cli("status", "--json")
        cli("audit", "verify", "--json")
        cli("unit", "add", "TRK-S1", "--json")  # an error: exists
        cli("enroll", "--unit", "TRK-S2", "--token", tokens[1] + "-wrong", "--server", gw.https_url)
        time.sleep(0.5)
        export = gw.cli("audit", "export", check=True).stdout
    finally:
        gw.stop(signal.SIGTERM)
    haystacks = {"gateway.log": gw.log(), "audit export": export, "cli + errors": "\n".join(outputs)}
    found = {
        name: [t[:6] + "…" for t in tokens if t in text] + (["PEM key"] if PRIVATE_KEY.search(text) else [])
        for name, text in haystacks.items()
    }
    record_figure(
        "secrets_grep",
        bytes_searched={name: len(text) for name, text in haystacks.items()},
        tokens_searched=len(tokens),
        leaks={name: hits for name, hits in found.items() if hits},
    )
    assert export.count("\n") > 10
    assert not any(found.values()), found
