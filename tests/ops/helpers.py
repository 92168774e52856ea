"""What the ops tests share: calling the admin API with a given certificate, metrics, audit records."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from gateway.admin.totp import hotp, secret_from_base32
from tests.harness import Credentials, GatewayProcess


def context(gw: GatewayProcess, creds: Credentials | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(gw.root_ca))
    if creds is not None:
        ctx.load_cert_chain(str(creds.cert), str(creds.key))
    return ctx


class Authenticator:
    """A test operator's authenticator app: a fresh, never used code for each sensitive call.

    The gateway accepts each 30-second step once, and at most one step ahead of its clock, so an
    operator has two codes now and one more every 30 s; past that this waits for the next step."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.last_step = -1

    def code(self) -> str:
        while True:
            now = time.time()
            current = int(now // 30)
            step = max(current, self.last_step + 1)
            if step <= current + 1:
                self.last_step = step
                return hotp(self.secret, step)
            time.sleep((current + 1) * 30 - now + 0.05)


AUTHENTICATORS: dict[Path, Authenticator] = {}  # by the operator's certificate file
_SENSITIVE = re.compile(
    r"/api/(units/[^/]+/release|identities/[^/]+/[^/]+/revoke|partners/[^/]+/disconnect|policy/reload)"
)


def issue_operator(gw: GatewayProcess, name: str, role: str, *extra: str) -> Credentials:
    """An operator with a TOTP second factor (sensitive admin rights need one), as `operator add --totp`
    makes it; `api` and `totp_code` then send its codes."""
    out = gw.clients / "operator"
    result = gw.cli(
        "operator", "add", name, "--role", role, "--totp", "--server", gw.https_url, "--out", str(out),
        "--json", *extra, check=True,
    )  # fmt: skip
    data = result.json()
    assert isinstance(data, dict)
    creds = Credentials(name, Path(data["cert"]), Path(data["key"]), Path(data["ca"]))
    secret = parse_qs(urlparse(data["totp_uri"]).query)["secret"][0]
    AUTHENTICATORS[creds.cert] = Authenticator(secret_from_base32(secret))
    return creds


def totp_code(creds: Credentials) -> str:
    """The next unused code of an operator made by `issue_operator` (for the CLI's --totp)."""
    return AUTHENTICATORS[creds.cert].code()


def api(
    gw: GatewayProcess,
    creds: Credentials | None,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of one admin API call; a sensitive one carries the operator's
    next TOTP code when it has an authenticator (see `issue_operator`)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    authenticator = AUTHENTICATORS.get(creds.cert) if creds is not None else None
    if authenticator is not None and _SENSITIVE.fullmatch(path):
        headers["X-Fleetgate-TOTP"] = authenticator.code()
    request = urllib.request.Request(gw.https_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context(gw, creds), timeout=15) as response:
            return response.status, json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode())


def metrics_text(gw: GatewayProcess) -> str:
    """/metrics, read the way a Prometheus scraper does: with an operator certificate (role metrics)."""
    reader = context(gw, gw.metrics_reader())
    with urllib.request.urlopen(f"{gw.https_url}/metrics", context=reader, timeout=10) as response:
        return str(response.read().decode())


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^fleetgate_{name}(_total)?(\{{{re.escape(want)}\}})? ([0-9.e+]+)$", re.M)
    match = pattern.search(metrics_text(gw))
    return float(match.group(3)) if match else 0.0


def audit_records(gw: GatewayProcess, wait: float = 0.0) -> list[dict[str, Any]]:
    time.sleep(wait)
    out = gw.cli("audit", "export")
    assert out.code == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def eventually(check: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def audit_via_api(gw: GatewayProcess, creds: Credentials, since: int = 0) -> list[dict[str, Any]]:
    """Every audit record after `since`, read over the admin API (faster than a CLI process)."""
    records: list[dict[str, Any]] = []
    while True:
        status, page = api(gw, creds, "GET", f"/api/audit?since={since}")
        assert status == 200, page
        records += page["records"]
        if len(page["records"]) < 1000:  # a short page is the end (each read is audited: never empty)
            return records
        since = page["records"][-1]["seq"]
