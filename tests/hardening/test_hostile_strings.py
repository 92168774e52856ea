"""Strings strangers choose (EST user names, request paths, client ids), from the review's
reproductions: they cannot forge a line in the operator's live feed or repaint the terminal, and a
flood of refused requests costs a bounded number of audit records and bytes.

`fleetgate events` runs on a pseudo-terminal, as an operator's would: click strips ANSI escapes only
when its output is not a terminal, so a pipe would hide what the operator sees.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import pty
import select
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.clients import V5, Paho
from tests.hardening.common import record_figure
from tests.harness import FLEETGATE, GatewayProcess
from tests.ops.helpers import metric

# The review's user name: a fake record end, a forged line of alice releasing TRK-1, ANSI and rich markup.
FORGED = "  9999 2026-12-06T21:40:00Z  operator/alice  unit.release  unit/TRK-1  ok"
INJECTION = f"x  est.enroll  unit/x  ok  (issued)\n{FORGED}\x1b[31m[red]RED[/red]"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path)
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


def _https(gw: GatewayProcess) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(gw.root_ca))
    return http.client.HTTPSConnection("localhost", gw.https_port, context=context, timeout=15)


def _request(connection: http.client.HTTPSConnection, method: str, path: str, **headers: str) -> int:
    body = b"MIIB" if method == "POST" else None
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def _basic(user: str, password: str = "t") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _on_a_terminal(*argv: str, seconds: float = 30) -> bytes:
    """What a command prints to a terminal (a pty), byte for byte."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdout=terminal, stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the command ended and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(controller)
    return out


def _head(gw: GatewayProcess) -> int:
    with sqlite3.connect(gw.data / "fleetgate.db") as db:
        return int(db.execute("SELECT seq FROM audit_head").fetchone()[0])


def test_injected_text_cannot_forge_a_line_or_repaint_the_operators_terminal(gw: GatewayProcess) -> None:
    mark = _head(gw)
    connection = _https(gw)
    # 1. The review's EST user name: refused as not a unit id, before anything records its text.
    est = _request(connection, "POST", "/.well-known/est/simpleenroll", Authorization=_basic(INJECTION))
    # 2. Its pieces in a request path (no certificate: 401), which is recorded, so must be escaped
    #    (ESC first: the review's string is longer than a recorded field, which is cut at 128).
    path = "/api/units/" + quote(f"\x1b[31m[red]RED[/red]\n{FORGED}", safe="")
    admin = _request(connection, "GET", path)
    connection.close()
    assert (est, admin) == (401, 401)
    time.sleep(0.6)  # the aggregated refusals are written at once; the event tick is 0.25 s
    events = _on_a_terminal(*FLEETGATE, "events", "--since", str(mark), "--data", str(gw.data))
    tail = _on_a_terminal(*FLEETGATE, "audit", "tail", "-n", "20", "--data", str(gw.data))
    text = events.decode(errors="replace")
    record_figure("injection", events_bytes=len(events), events=text[-2000:])
    lines = text.splitlines()
    assert any("admin.request" in line and "no_client_certificate" in line for line in lines), text
    assert not any(line.lstrip().startswith("9999") for line in lines), f"a forged line was printed:\n{text}"
    assert b"\x1b" not in events, "a raw ESC reached the operator's terminal (fleetgate events)"
    assert "\\n" in text and "\\x1b[31m" in text  # shown, escaped, inside the path's one line
    assert "est.enroll" in text and "invalid_unit_id" in text
    assert "operator/alice  unit.release" not in text.split("admin.request")[0]  # the user name is not in it
    # `audit tail` (a rich table, which styles its own header on a terminal): the path's markup is
    # shown literally, never interpreted, and its ESC is escaped.
    assert b"[red]" in tail, "rich markup from a request path was interpreted by `audit tail`"
    assert b"\x1b[31m" not in tail, "the request path turned the operator's terminal red"
    # Nothing stored anywhere holds the EST user name's text.
    with sqlite3.connect(gw.data / "fleetgate.db") as db:
        stored = " ".join(
            " ".join(map(str, row)) for row in db.execute("SELECT * FROM audit_log WHERE seq > ?", (mark,))
        )
    assert "(issued)" not in stored


def _audit_size(gw: GatewayProcess) -> tuple[int, int]:
    with sqlite3.connect(gw.data / "fleetgate.db") as db:
        count, size = db.execute(
            "SELECT count(*), coalesce(sum(length(actor) + length(action) + length(subject) + length(outcome)"
            " + length(reason) + length(details) + length(prev_hash) + length(hash) + length(at)), 0)"
            " FROM audit_log"
        ).fetchone()
    return int(count), int(size)


def test_a_flood_of_refused_requests_costs_a_bounded_number_of_audit_records(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-FLOOD-1")
    records_before, bytes_before = _audit_size(gw)
    started = time.monotonic()
    connection = _https(gw)
    long_name = _basic("A" * 5500)
    statuses = [
        _request(connection, "POST", "/.well-known/est/simpleenroll", Authorization=long_name)
        for _ in range(300)
    ]
    statuses += [
        _request(
            connection, "POST", "/.well-known/est/simpleenroll", Authorization=_basic(f"TRK-NOPE-{i}", "bad")
        )
        for i in range(300)
    ]
    statuses += [_request(connection, "GET", "/api/units/" + "B" * 6000) for _ in range(200)]
    connection.close()
    refused_connects = 0
    for i in range(10):  # a certificate holder's CONNECTs with 60 KB client ids (0x85 each)
        client = Paho(gw.mqtt_port, unit, client_id="X" * 60000 + str(i), version=V5)
        try:
            refused_connects += client.connect(timeout=10)[0] == 0x85
        finally:
            client.client.loop_stop()
    flood_seconds = time.monotonic() - started
    time.sleep(0.6)
    audit_bytes_metric = metric(gw, "audit_bytes")
    records_during, bytes_during = _audit_size(gw)
    gw.stop()  # a clean stop writes the summaries of every open window (with their counts)
    records_after, bytes_after = _audit_size(gw)
    with sqlite3.connect(gw.data / "fleetgate.db") as db:
        rows = db.execute(
            "SELECT reason, details FROM audit_log WHERE seq > ? AND outcome = 'refused'", (records_before,)
        ).fetchall()
    counted: dict[str, int] = {}
    for reason, details in rows:
        counted[reason] = counted.get(reason, 0) + int(json.loads(details).get("count", 1))
    added = records_after - records_before
    record_figure(
        "refused_request_flood",
        requests=len(statuses),
        refused_connects=refused_connects,
        seconds=round(flood_seconds, 2),
        records_before=records_before,
        records_during=records_during,
        records_after=records_after,
        bytes_before=bytes_before,
        bytes_during=bytes_during,
        bytes_after=bytes_after,
        bytes_per_request=round((bytes_after - bytes_before) / (len(statuses) + 10), 1),
        counted=counted,
        audit_bytes_metric=audit_bytes_metric,
    )
    # 401: not a unit id / no certificate; 400: "MIIB" is no CSR (the review's body)
    assert (statuses.count(401), statuses.count(400)) == (500, 300), sorted(set(statuses))
    assert refused_connects == 10
    # Three runs of refused requests (one per source, action and reason) plus the stop's summaries,
    # plus the 10 refused CONNECTs (one record each, cut to size), plus start/stop records.
    assert added <= 3 * 2 + 10 + 4, f"{added} records for {len(statuses)} refused requests"
    assert bytes_after - bytes_before < 40_000  # was ~5 MB: 11 KB per EST request, 120 KB per CONNECT
    # Every refused request is still accounted for, in the counts.
    assert counted.get("invalid_unit_id") == 300
    assert counted.get("bad_csr_body") == 300
    assert counted.get("no_client_certificate") == 200
    assert audit_bytes_metric > 0
