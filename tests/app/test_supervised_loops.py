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

from gateway.app.runtime import Gateway
from gateway.app.supervisor import LoopHealth, supervise
from gateway.broker.events import ClientConnected
from gateway.config import load_config
from gateway.policy.access import Peer
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
