"""The admin API over real mTLS: who is refused (and audited), what each role may do, bad input,
the live event stream, the OpenAPI document, and the CLI commands that talk to it."""

from __future__ import annotations

import http.client
import itertools
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import pytest

from gateway.app.runtime import Gateway
from gateway.config import load_config
from gateway.stores.datadir import DataDir
from tests.clients import V5
from tests.harness import FLEETGATE, Credentials, GatewayProcess, run_cli
from tests.ops.helpers import api, audit_via_api, context, eventually, issue_operator, totp_code
from tests.ops.watch import Watch


@pytest.fixture(scope="module")
def ids(gateway: GatewayProcess) -> dict[str, Credentials]:
    return {
        # olga and sam take sensitive actions, so they have a second factor (api() sends their codes)
        "ops": issue_operator(gateway, "olga", "ops"),
        "security": issue_operator(gateway, "sam", "security"),
        "auditor": gateway.issue("operator", "ada", "--role", "auditor", "--server", gateway.https_url),
        "unit": gateway.enroll_unit("TRK-A1"),
        "unit2": gateway.enroll_unit("TRK-A2"),
    }


FRESH = itertools.count()  # numbers for operators made for one call each


def refusals(gw: GatewayProcess, reader: Credentials) -> list[dict[str, object]]:
    records = audit_via_api(gw, reader)
    return [r for r in records if r["action"] == "admin.request" and r["outcome"] == "refused"]


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "reason"),
    [
        (None, "GET", "/api/units", None, 401, "no_client_certificate"),
        ("unit", "GET", "/api/units", None, 403, "not_an_operator"),
        ("unit", "POST", "/api/units/TRK-A1/release", {}, 403, "not_an_operator"),
        ("auditor", "POST", "/api/units/TRK-A1/quarantine", {"reason": "x"}, 403, "role_lacks_right"),
        (
            "ops",
            "POST",
            "/api/identities/unit/TRK-A1/revoke",
            {"reason": "x", "confirm": True},
            403,
            "role_lacks_right",
        ),
        ("ops", "POST", "/api/partners/acme/disconnect", {"dry_run": True}, 403, "role_lacks_right"),
        ("ops", "POST", "/api/policy/reload", {}, 403, "role_lacks_right"),
        ("ops", "GET", "/api/audit", None, 403, "role_lacks_right"),
    ],
)
def test_refusals_are_answered_and_audited_with_who_and_what(
    gateway: GatewayProcess,
    ids: dict[str, Credentials],
    who: str | None,
    method: str,
    path: str,
    body: object,
    status: int,
    reason: str,
) -> None:
    got, answer = api(gateway, ids[who] if who else None, method, path, body)
    assert (got, answer["code"]) == (status, reason)
    assert answer["error"].endswith(".") and "\n" not in answer["error"]
    if who in (None, "unit"):
        # Refusals that named no operator are aggregated per source address: the first of a run is
        # written at once, the rest are counted into summaries.
        assert any(
            r["actor"] == "address/127.0.0.1" and r["reason"] == reason
            for r in refusals(gateway, ids["auditor"])
        ), f"no audit record for {method} {path} from 127.0.0.1"
    else:
        actor = f"operator/{ids[str(who)].ident}"
        assert any(
            r["actor"] == actor and r["reason"] == reason and r["subject"] == f"{method} {path}"
            for r in refusals(gateway, ids["auditor"])
        ), f"no audit record for {actor} {method} {path}"
    assert api(gateway, ids["unit"], "GET", "/api/units/TRK-A1")[0] == 403  # and nothing was done for them


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "raw", "status", "code"),
    [
        ("ops", "POST", "/api/units/TRK-A1/quarantine", None, b"{not json", 400, "bad_request"),
        ("ops", "POST", "/api/units/TRK-A1/quarantine", {"reason": ""}, None, 400, "bad_request"),
        ("ops", "POST", "/api/units/TRK-A1/quarantine", ["reason"], None, 400, "bad_request"),
        ("ops", "POST", "/api/units/NOPE-1/quarantine", {"reason": "x"}, None, 404, "unknown_unit"),
        ("ops", "POST", "/api/units/bad%2Fid/release", {}, None, 400, "invalid_id"),
        ("ops", "GET", "/api/units/NOPE-1", None, None, 404, "unknown_unit"),
        ("security", "POST", "/api/identities/unit/TRK-A1/revoke", {"reason": "x"}, None, 400, "bad_request"),
        (
            "security",
            "POST",
            "/api/identities/robot/R1/revoke",
            {"reason": "x", "confirm": True},
            None,
            400,
            "invalid_kind",
        ),
        ("security", "POST", "/api/partners/nobody/disconnect", {"dry_run": "yes"}, None, 400, "bad_request"),
        ("security", "POST", "/api/partners/nobody/disconnect", {}, None, 404, "unknown_partner"),
        ("auditor", "GET", "/api/audit?since=abc", None, None, 400, "bad_request"),
    ],
)
def test_bad_input_gets_a_one_sentence_error(
    gateway: GatewayProcess,
    ids: dict[str, Credentials],
    who: str,
    method: str,
    path: str,
    body: object,
    raw: bytes | None,
    status: int,
    code: str,
) -> None:
    creds = ids[who]
    if method == "POST" and not path.endswith("/quarantine"):  # a sensitive right: its own operator, so
        creds = issue_operator(gateway, f"{who}{next(FRESH)}", who)  # codes never run out
    got, answer = api(gateway, creds, method, path, body, raw=raw)
    assert (got, answer["code"]) == (status, code), answer
    assert answer["error"].endswith(".") and answer["error"].count(". ") == 0


def test_roles_allow_what_the_table_says(gateway: GatewayProcess, ids: dict[str, Credentials]) -> None:
    for who in ("ops", "security", "auditor"):
        assert api(gateway, ids[who], "GET", "/api/units")[0] == 200
        assert api(gateway, ids[who], "GET", "/api/sessions")[0] == 200
    status, body = api(gateway, ids["ops"], "POST", "/api/units/TRK-A1/quarantine", {"reason": "drill"})
    assert status == 200 and body["state"] == "quarantined"
    assert (
        api(gateway, ids["ops"], "POST", "/api/units/TRK-A1/quarantine", {"reason": "again"})[1]["changed"]
        is False
    )
    unit = api(gateway, ids["auditor"], "GET", "/api/units/TRK-A1")[1]
    assert (unit["quarantine_reason"], unit["quarantined_by"]) == ("drill", "operator/olga")
    assert api(gateway, ids["ops"], "POST", "/api/units/TRK-A1/release")[1]["state"] == "enrolled"
    status, body = api(gateway, ids["security"], "POST", "/api/policy/reload")
    assert status == 200 and body["reloaded"] is True
    status, page = api(gateway, ids["auditor"], "GET", "/api/audit?since=0&limit=5")
    assert status == 200 and len(page["records"]) == 5 and page["head"] > 5
    actions = {(r["actor"], r["action"]) for r in audit_via_api(gateway, ids["security"])}
    assert {
        ("operator/olga", "unit.quarantine"),
        ("operator/olga", "unit.release"),
        ("operator/sam", "policy.reload"),
        ("operator/ada", "admin.audit.read"),
    } <= actions


def test_revoking_a_unit_cuts_its_session_and_the_cli_wants_force(
    gateway: GatewayProcess, ids: dict[str, Credentials]
) -> None:
    profile = Path(str(ids["security"].cert.parent / "sam.profile.json"))
    watch = Watch(gateway, ids["unit2"], "fleet/TRK-A2/control/#", version=V5)
    refused = run_cli("revoke", "unit/TRK-A2", "--reason", "keyCompromise", "--profile", str(profile))
    assert refused.code == 1 and "--force" in refused.stderr and "vehicle control" in refused.stderr
    done = run_cli(
        "revoke", "unit/TRK-A2", "--reason", "keyCompromise", "--force", "--json", "--profile", str(profile),
        "--totp", totp_code(ids["security"]),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    result = done.json()
    assert isinstance(result, dict) and result["sessions_closed"] == 1 and result["state"] == "revoked"
    assert "warning" in done.stderr
    assert watch.client.disconnects.get(timeout=2) == 0x87
    status, denied = api(gateway, ids["security"], "POST", "/api/units/TRK-A2/quarantine", {"reason": "late"})
    assert (status, denied["code"]) == (409, "identity_revoked")
    watch.client.client.loop_stop()  # paho would keep trying to reconnect
    missing = run_cli("status", "NOPE-9", "--profile", str(profile))
    assert missing.code == 4
    wrong_role = run_cli(
        "partner", "disconnect", "acme", "--profile", str(ids["ops"].cert.parent / "olga.profile.json")
    )
    assert wrong_role.code == 3 and "may not disconnect partners" in wrong_role.stderr


def read_events(response: http.client.HTTPResponse, want: str, timeout: float = 5.0) -> list[str]:
    """SSE lines until one contains `want`."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = response.readline().decode()
        lines.append(line.rstrip("\n"))
        if want in line:
            return lines
    raise AssertionError(f"{want!r} not in the stream: {lines}")


def test_events_stream_new_audit_records_with_heartbeats(
    gateway: GatewayProcess, ids: dict[str, Credentials]
) -> None:
    conn = http.client.HTTPSConnection(
        "localhost", gateway.https_port, context=context(gateway, ids["auditor"]), timeout=5
    )
    conn.request("GET", "/api/events?heartbeat=0.2")
    response = conn.getresponse()
    assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
    read_events(response, ": heartbeat")
    api(gateway, ids["ops"], "POST", "/api/units/TRK-A1/quarantine", {"reason": "stream me"})
    lines = read_events(response, '"unit.quarantine"')
    record = json.loads(lines[-1].removeprefix("data: "))
    assert lines[-2] == "event: audit" and lines[-3] == f"id: {record['seq']}"
    assert (record["actor"], record["reason"]) == ("operator/olga", "stream me")
    conn.close()

    def streams() -> int:
        return sum(r["action"] == "admin.events.read" for r in audit_via_api(gateway, ids["security"]))

    before = streams()
    profile = str(ids["auditor"].cert.parent / "ada.profile.json")
    follow = subprocess.Popen(
        [*FLEETGATE, "events", "--follow", "--json", "--profile", profile],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert eventually(lambda: streams() > before, timeout=10), "events --follow never connected"
        api(gateway, ids["ops"], "POST", "/api/units/TRK-A1/release")
        printed: queue.Queue[str] = queue.Queue()

        def pipe() -> None:
            for line in follow.stdout or ():
                printed.put(line)

        threading.Thread(target=pipe, daemon=True).start()
        followed: dict[str, object] = {}
        while followed.get("action") != "unit.release":
            followed = json.loads(printed.get(timeout=5))
        assert followed["actor"] == "operator/olga"
    finally:
        follow.terminate()
        follow.wait(5)


def test_openapi_document_covers_every_route_and_nothing_else(
    gateway: GatewayProcess, ids: dict[str, Credentials]
) -> None:
    status, doc = api(gateway, ids["auditor"], "GET", "/api/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    in_process = Gateway(DataDir(gateway.data), load_config())  # the real app, not a copy of its table
    try:
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in in_process._http_app().router.routes()
            if route.resource is not None
            and route.resource.canonical.startswith("/api/")
            and route.method != "HEAD"
        }
    finally:
        in_process._broker_db.close()
        in_process._registry_db.close()
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert routes == documented
    schemas = doc["components"]["schemas"]
    for path, item in doc["paths"].items():
        for operation in item.values():
            assert operation["x-fleetgate-roles"] and {"200", "401", "403"} <= set(operation["responses"]), (
                path
            )
            for ref in json.dumps(operation).split('"$ref": "#/components/schemas/')[1:]:
                assert ref.split('"')[0] in schemas


def _call(
    gw: GatewayProcess,
    creds: Credentials | None,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPSConnection(
        "localhost", gw.https_port, context=context(gw, creds), timeout=15
    )
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read().decode() or "{}")
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        (
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
        ),  # a cross-site <form enctype=text/plain>
        ({}, 415, "unsupported_media_type"),  # a body with no type at all
        ({"Content-Type": "application/json", "Origin": "https://evil.example"}, 403, "foreign_origin"),
        ({"Content-Type": "application/json", "Origin": "null"}, 403, "foreign_origin"),
    ],
    ids=["text-plain", "no-content-type", "foreign-origin", "null-origin"],
)
def test_cross_site_requests_are_refused_before_anything_is_done(
    gateway: GatewayProcess, ids: dict[str, Credentials], headers: dict[str, str], status: int, code: str
) -> None:
    body = b'{"reason":"csrf","x":"="}'
    got, answer = _call(gateway, ids["ops"], "POST", "/api/units/TRK-A2/quarantine", body, headers)
    assert (got, answer["code"]) == (status, code), answer
    assert api(gateway, ids["ops"], "GET", "/api/units/TRK-A2")[1]["state"] != "quarantined"


def test_the_clis_requests_and_same_origin_requests_are_served(
    gateway: GatewayProcess, ids: dict[str, Credentials]
) -> None:
    same = {"Origin": f"https://localhost:{gateway.https_port}"}
    assert _call(gateway, ids["ops"], "GET", "/api/units/TRK-A2", b"", same)[0] == 200
    assert _call(gateway, ids["ops"], "GET", "/api/units/TRK-A2", b"", {})[0] == 200  # no Origin: the CLI
    # No body, no type: not refused as 415; it reaches the right's own checks (release is sensitive,
    # so the second factor is asked for first).
    status, body = _call(gateway, ids["ops"], "POST", "/api/units/NOPE-9/release", b"", {})
    assert status == 401 and str(body.get("code", "")).startswith("totp_"), body


def test_metrics_need_an_operator_certificate(gateway: GatewayProcess, ids: dict[str, Credentials]) -> None:
    assert _call(gateway, None, "GET", "/metrics", b"", {})[0] == 401
    assert _call(gateway, ids["unit"], "GET", "/metrics", b"", {})[0] == 403
    reader = gateway.metrics_reader()  # role metrics: a Prometheus scraper
    connection = http.client.HTTPSConnection(
        "localhost", gateway.https_port, context=context(gateway, reader), timeout=15
    )
    connection.request("GET", "/metrics")
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.status == 200 and "fleetgate_listener_capacity" in text
    assert _call(gateway, reader, "GET", "/api/units", b"", {})[0] == 403  # and nothing else
