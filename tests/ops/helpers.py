"""What the ops tests share: calling the admin API with a given certificate, metrics, audit records."""

from __future__ import annotations

import json
import re
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from tests.harness import Credentials, GatewayProcess


def context(gw: GatewayProcess, creds: Credentials | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(gw.root_ca))
    if creds is not None:
        ctx.load_cert_chain(str(creds.cert), str(creds.key))
    return ctx


def api(
    gw: GatewayProcess,
    creds: Credentials | None,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) of one admin API call."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        gw.https_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
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
