"""Live fuzzing over mTLS: hostile and mutated packets from enrolled units while a bystander publishes
at a steady rate. The gateway never exits, never counts an internal error, never logs a traceback,
and the bystander loses nothing and keeps its rate."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections.abc import Iterator

import pytest

from device_sim.attacks.fuzz import hostile_catalogue, run_fuzz
from gateway.mqtt.packets import ProtocolVersion
from tests.hardening.common import Bystander, internal_errors, record_figure, rss_kib
from tests.harness import GatewayProcess

FUZZ_UNITS = 4
INPUTS = 800
SECONDS = 15.0


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("fuzz"))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


def test_the_catalogue_covers_the_issue() -> None:
    names = {name for name, _ in hostile_catalogue("TRK-1", ProtocolVersion.MQTT_5)}
    for wanted in (
        "qos3",
        "zero_length_topic",
        "invalid_utf8_topic",
        "huge_remaining_length",
        "duplicate_property",
        "unknown_property",
        "pubrel_unknown_id",
        "packet_id_reuse_qos2",
    ):
        assert wanted in names


def test_live_fuzz_costs_a_bystander_nothing(gw: GatewayProcess) -> None:
    units = [gw.enroll_unit(f"TRK-FZ{i}") for i in range(FUZZ_UNITS)]
    bystander = Bystander(gw, gw.enroll_unit("TRK-BYSTANDER"), gw.issue("service", "dispatch"), rate=5)
    rss_before = rss_kib(gw)
    contexts: list[tuple[str, ssl.SSLContext]] = [(u.ident, gw.client_context(u)) for u in units]
    bystander.start()
    started = time.monotonic()
    stats = asyncio.run(run_fuzz("127.0.0.1", gw.mqtt_port, contexts, inputs=INPUTS, seconds=SECONDS, seed=9))
    rss_during = rss_kib(gw)
    report = bystander.stop()
    assert gw.proc is not None and gw.proc.poll() is None, "the gateway exited under fuzzing"
    errors = internal_errors(gw)
    record_figure(
        "live_fuzz",
        **stats.as_dict(),
        wall_seconds=round(time.monotonic() - started, 1),
        bystander=report,
        internal_errors=errors,
        rss_kib_before=rss_before,
        rss_kib_after=rss_during,
    )
    assert stats.inputs >= 300, stats.as_dict()
    assert errors == 0
    assert "Traceback" not in gw.log()
    assert report["missing"] == 0 and report["disconnects"] == 0, report
    assert report["received"] >= 0.9 * report["sent"], report
    assert report["rate_received"] >= 0.9 * bystander.rate, report
