"""Background loops have an owner: a step that raises (an audit append on a full disk, a registry read
that fails) is said in one log line, retried, and recovers; nothing the failing tick drained is lost
from the audit log."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.app.runtime import AUDIT_SLICE, Gateway
from gateway.app.supervisor import LoopHealth, supervise
from gateway.broker.events import ClientConnected
from gateway.config import load_config
from gateway.policy.peer import Peer
from gateway.stores.datadir import DataDir
from pki.names import Identity
from tests.harness import INSECURE_KEYS, run_cli


async def test_a_failing_step_is_logged_once_retried_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def step() -> None:
        calls.append("step")
        if 2 <= len(calls) <= 4:
            raise OSError("database or disk is full")

    health = LoopHealth("following the registry")
    with caplog.at_level(logging.INFO, logger="fleetgate.supervisor"):
        task = asyncio.create_task(supervise(step, 0.001, health))
        while len(calls) < 7:
            await asyncio.sleep(0.005)
        task.cancel()
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and "following the registry failed" in failed[0].getMessage()
    assert "disk is full" in failed[0].getMessage()
    assert any("works again after 3 failed attempt(s)" in r.getMessage() for r in caplog.records)
    assert health.failures == 3 and not health.failing


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    run_cli("init", "--hostname", "localhost", *INSECURE_KEYS, data=tmp_path, check=True)
    return Gateway(DataDir(tmp_path), load_config())


def test_events_drained_while_the_audit_log_fails_are_recorded_once_it_works(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = gateway.audit.append
    broken = {"on": True}

    def append(**record: Any) -> Any:
        if broken["on"]:
            raise sqlite3.OperationalError("database or disk is full")
        return real_append(**record)

    monkeypatch.setattr(gateway.audit, "append", append)
    unit = Identity("unit", "TRK-1", gateway.trust_domain)
    peer = Peer(address="127.0.0.1:5000", identity=unit)
    gateway.broker._st.events.append(ClientConnected(peer, "TRK-1", False, 4))
    with pytest.raises(sqlite3.OperationalError):
        gateway.drain_events()
    broken["on"] = False
    gateway.drain_events()
    actions = [r.action for r in gateway.audit.tail_after(0, limit=100)]
    assert actions.count("mqtt.connect") == 1


def _busy_fleet(gateway: Gateway, units: int) -> None:
    """What a tick finds after `units` units connected and each sent a GPS fix: connect events for
    the audit log, and subjects for the detectors and the flow map."""
    now = gateway.clock.now()
    for n in range(units):
        peer = Peer(f"10.0.{n // 250}.{n % 250}:5000", Identity("unit", f"TRK-{n}", gateway.trust_domain))
        gateway.broker._st.events.append(ClientConnected(peer, f"TRK-{n}", False, 4))
        topic, fix = f"fleet/TRK-{n}/telemetry/gps", b'{"lat": 51.9, "lon": 4.5}'
        gateway.continuous.evaluator.observe_publish(peer, topic, fix, now)
        gateway.flows.observe(peer, topic, fix, now)


async def test_an_event_tick_over_a_thousand_units_lets_the_loop_serve_reads_while_it_works(
    gateway: Gateway,
) -> None:
    _busy_fleet(gateway, 1000)
    turns = 0

    async def other_work() -> None:  # what the loop would be serving: reads, writes, timers
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    await gateway.event_tick()
    during = turns - before
    other.cancel()
    # audit commits of AUDIT_SLICE events, detector and flow-map slices: the loop ran between them
    assert during >= 10
    records = gateway.audit.tail_after(0, limit=5000)
    assert sum(r.action == "mqtt.connect" for r in records) == 1000
    (published,) = [r for r in gateway.flows.snapshot(gateway.clock.now()).rows if r.action == "publish"]
    assert (published.messages, published.identities) == (1000, 1000)  # every unit's fix, once


async def test_an_audit_failure_between_two_commits_of_a_tick_loses_and_repeats_nothing(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = gateway.audit.append
    appended = {"n": 0, "broken": True}

    def append(**record: Any) -> Any:
        appended["n"] += 1
        if appended["broken"] and appended["n"] > AUDIT_SLICE + AUDIT_SLICE // 2:  # within the second commit
            raise sqlite3.OperationalError("database or disk is full")
        return real_append(**record)

    monkeypatch.setattr(gateway.audit, "append", append)
    _busy_fleet(gateway, 1000)
    with pytest.raises(sqlite3.OperationalError):
        await gateway.event_tick()
    committed = [r for r in gateway.audit.tail_after(0, limit=5000) if r.action == "mqtt.connect"]
    assert len(committed) == AUDIT_SLICE  # the first commit stands; the second was rolled back
    appended["broken"] = False
    await gateway.event_tick()
    connects = [r.subject for r in gateway.audit.tail_after(0, limit=5000) if r.action == "mqtt.connect"]
    assert sorted(connects) == sorted(f"TRK-{n}" for n in range(1000))  # each once
