"""The pieces under the ops commands, without sockets: quarantine as registry facts, the mode command,
partner membership, purging offline sessions, the admin roles table and the event feed."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import hashes

from gateway.admin.rights import ROLE_RIGHTS
from gateway.admin.sse import AuditFeed, stream_events
from gateway.mqtt.packets import Properties
from gateway.ops.partners import partner_members
from gateway.ops.quarantine import OpsError, mode_command, quarantine_unit, release_unit
from gateway.stores.audit_log import AuditLog
from gateway.stores.policy_file import load_policy
from pki.signed_json import JsonSigner, verify
from pki.store import Registry, open_database
from tests.broker.lab import Lab, service_peer
from tests.signing import make_signer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(open_database(tmp_path / "fleet.db"))
    registry.add_identity("unit", "TRK-1", NOW, {"vin": "V1"}, state="enrolled")
    return registry


def test_quarantine_writes_state_and_why_since_by_in_one_change(registry: Registry) -> None:
    change = quarantine_unit(registry, "TRK-1", "  tamper \n alarm ", "operator/olga", NOW)
    assert change.changed and change.record.state == "quarantined"
    assert change.record.metadata == {
        "vin": "V1",
        "quarantine_reason": "tamper alarm",
        "quarantined_since": "2026-03-01T12:00:00.000000+00:00",
        "quarantined_by": "operator/olga",
    }
    again = quarantine_unit(registry, "TRK-1", "other", "detector/rate", NOW + timedelta(minutes=1))
    assert not again.changed and again.record.metadata["quarantine_reason"] == "tamper alarm"


def test_release_returns_to_enrolled_and_remembers_who_released(registry: Registry) -> None:
    quarantine_unit(registry, "TRK-1", "drill", "operator/olga", NOW)
    change = release_unit(registry, "TRK-1", "operator/sam", NOW + timedelta(hours=1))
    assert change.changed and change.record.state == "registered"  # it has no certificate in this registry
    assert "quarantine_reason" not in change.record.metadata
    assert change.record.metadata["released_by"] == "operator/sam"
    assert not release_unit(registry, "TRK-1", "operator/sam", NOW).changed


@pytest.mark.parametrize(
    ("unit", "reason", "code", "status"),
    [
        ("TRK-404", "x", "unknown_unit", 404),
        ("bad/id", "x", "invalid_id", 400),
        ("TRK-1", "   ", "reason_required", 400),
        ("TRK-1", "x" * 501, "reason_too_long", 400),
    ],
)
def test_quarantine_refusals_say_why(
    registry: Registry, unit: str, reason: str, code: str, status: int
) -> None:
    with pytest.raises(OpsError) as caught:
        quarantine_unit(registry, unit, reason, "operator/olga", NOW)
    assert (caught.value.code, caught.value.status) == (code, status)


def test_a_revoked_unit_cannot_be_quarantined(registry: Registry) -> None:
    registry.set_state("unit", "TRK-1", "revoked", NOW)
    with pytest.raises(OpsError, match="revoked") as caught:
        quarantine_unit(registry, "TRK-1", "late", "operator/olga", NOW)
    assert caught.value.status == 409


def test_the_mode_command_follows_the_record_alone_and_is_signed(registry: Registry) -> None:
    policy, signer = load_policy(None), make_signer()
    fresh = registry.get_identity("unit", "TRK-1")
    assert fresh is not None and mode_command(fresh, policy, signer) is None  # never quarantined: nothing
    quarantined = quarantine_unit(registry, "TRK-1", "drill", "operator/olga", NOW).record
    payload = mode_command(quarantined, policy, signer)
    assert payload is not None and payload == mode_command(quarantined, policy, signer)  # same bytes
    restarted = JsonSigner(signer.key, signer.certificate)  # a restart: same key, a new signer
    assert mode_command(quarantined, policy, restarted) == payload  # deterministic ECDSA
    assert verify(payload, signer.certificate) == {
        "mode": "diagnostic-only",
        "unit": "TRK-1",
        "reason": "drill",
        "since": "2026-03-01T12:00:00.000000+00:00",
        "by": "operator/olga",
        "allowed": ["fleet/TRK-1/diag/#", "fleet/TRK-1/cmd/+/ack"],
    }
    assert json.loads(payload)["signer"] == signer.certificate.fingerprint(hashes.SHA256()).hex()
    released = release_unit(registry, "TRK-1", "operator/sam", NOW).record
    assert verify(mode_command(released, policy, signer) or b"", signer.certificate) == {
        "mode": "normal",
        "unit": "TRK-1",
        "since": "2026-03-01T12:00:00.000000+00:00",
        "by": "operator/sam",
    }


def test_a_partner_is_its_own_identity_and_every_identity_of_its_org(registry: Registry) -> None:
    for ident, org in (("acme", None), ("acme-eu", "acme"), ("acme-us", "acme"), ("acmeish", None)):
        registry.add_identity("partner", ident, NOW, {"tier": "1", **({"org": org} if org else {})})
    assert [r.id for r in partner_members(registry, "acme")] == ["acme", "acme-eu", "acme-us"]
    assert [r.id for r in partner_members(registry, "acme-eu")] == ["acme-eu"]
    with pytest.raises(OpsError) as caught:
        partner_members(registry, "globex")
    assert caught.value.status == 404


def test_offline_persistent_sessions_of_cut_off_identities_are_discarded() -> None:
    lab = Lab()
    keep = Properties(session_expiry_interval=3600)
    for name in ("acme-eu", "globex"):
        link = lab.connect(name, clean_start=False, properties=keep, peer=service_peer(name))
        link.subscribe("fleet/+/telemetry/#")
        link.lose()
    acme = {service_peer("acme-eu").identity}
    purged = lab.broker.discard_offline_sessions(lambda peer: peer.identity in acme, lab.now)
    assert (purged.sessions, purged.subscriptions) == (1, 1)
    assert [s.client_id for s in lab.broker.sessions()] == ["globex"]


def test_roles_table() -> None:
    mutations = {
        "units.quarantine",
        "units.release",
        "identities.revoke",
        "partners.disconnect",
        "policy.reload",
    }
    assert ROLE_RIGHTS["auditor"].isdisjoint(mutations)
    assert ROLE_RIGHTS["ops"] >= {"units.quarantine", "units.release", "units.read", "sessions.read"}
    assert ROLE_RIGHTS["ops"].isdisjoint({"identities.revoke", "partners.disconnect", "policy.reload"})
    assert ROLE_RIGHTS["security"] >= ROLE_RIGHTS["ops"] | mutations


async def test_the_event_feed_fans_out_and_cuts_a_slow_reader(tmp_path: Path) -> None:
    audit = AuditLog(open_database(tmp_path / "audit.db"))
    feed = AuditFeed(audit, lambda: datetime.now(UTC), buffer=3)
    fast, slow = feed.subscribe(), feed.subscribe()
    for n in range(3):
        audit.append(actor="system", action="test", subject=str(n), outcome="ok", now=NOW)
    assert feed.poll_once() == 3
    assert [(await fast.queue.get()).subject for _ in range(3)] == ["0", "1", "2"]  # type: ignore[union-attr]
    audit.append(actor="system", action="test", subject="3", outcome="ok", now=NOW)
    feed.poll_once()
    assert slow.overflowed and not fast.overflowed  # slow never read: its buffer of 3 is full
    feed.unsubscribe(slow)
    feed.close()
    assert (await fast.queue.get()).subject == "3"  # type: ignore[union-attr]
    assert await asyncio.wait_for(fast.queue.get(), 1) is None  # closing ends the stream


async def test_a_stream_that_falls_behind_is_told_where_to_resume(tmp_path: Path) -> None:
    audit = AuditLog(open_database(tmp_path / "audit.db"))
    feed = AuditFeed(audit, lambda: datetime.now(UTC), buffer=2)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_events(request, audit, feed, None, heartbeat=5)

    app = web.Application()
    app.router.add_get("/events", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/events")
        await response.content.readuntil(b"\n\n")  # the preamble: the stream is following
        for n in range(5):  # five records at once into a buffer of two
            audit.append(actor="system", action="test", subject=str(n), outcome="ok", now=NOW)
        while feed.poll_once():  # polls in batches of `buffer`; the handler gets no turn in between
            pass
        body = (await asyncio.wait_for(response.content.read(), 5)).decode()
    assert "event: overflow" in body and '"resume_from": 0' in body
    assert feed.subscribers == 0
