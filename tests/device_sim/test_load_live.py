"""run_load against live brokers over mTLS: a fleetgate subprocess, and Mosquitto on the same CA."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.brokers import MosquittoBroker
from benchmarks.mosquitto import MOSQUITTO, acl_from_policy, load_policy
from device_sim.load.identities import BulkIssuer, unit_ids
from device_sim.load.report import generator_warnings
from device_sim.load.run import LoadOptions, run_load
from tests.harness import GatewayProcess


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    gw = GatewayProcess(tmp_path_factory.mktemp("load"))
    gw.init()
    with BulkIssuer(gw.data) as issuer:
        issuer.units(unit_ids(6), gw.root / "units")
        issuer.roles("service", ["analytics", "dispatch"], gw.root / "services")
    gw.start()
    yield gw, gw.root
    gw.stop()


def _options(root: Path, port: int, **extra: object) -> LoadOptions:
    values: dict[str, object] = dict(
        port=port, certs_dir=root / "units", subscriber_dir=root / "services", units=5, rate_per_unit=20.0,
        duration=1.0, progress=False, drain_timeout=2.0,
    )  # fmt: skip
    values.update(extra)
    return LoadOptions(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("qos", [0, 1])
async def test_every_offered_message_reaches_the_subscriber(
    fleet: tuple[GatewayProcess, Path], qos: int, tmp_path: Path
) -> None:
    gw, root = fleet
    assert gw.proc is not None
    report = await run_load(
        _options(root, gw.mqtt_port, qos=qos, broker_pid=gw.proc.pid, broker_label="fleetgate")
    )
    assert report.units_connected == 5 and not report.connect_failures
    assert report.offered == 100 and report.sent == 100 and report.delivered == 100
    assert report.drops["lost_in_broker"] == 0
    if qos:
        assert report.acked == 100 and report.delivered_of_acked_pct == 100.0
        assert report.drops["acknowledged_not_delivered"] == 0
    assert report.latency_ms["p50"] > 0 and report.connack_ms["p99"] > 0
    assert report.broker_rss_mb["end"] > 0 and report.broker_cpu_percent is not None
    report.write_png(tmp_path / "run.png")
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("qos", [0, 1])
async def test_publishers_spread_over_processes_deliver_everything_and_report_each_ones_cpu(
    fleet: tuple[GatewayProcess, Path], qos: int
) -> None:
    gw, root = fleet
    assert gw.proc is not None
    report = await run_load(
        _options(root, gw.mqtt_port, qos=qos, processes=2, broker_pid=gw.proc.pid, broker_label="fleetgate")
    )
    assert report.units_connected == 5 and not report.connect_failures
    assert report.offered == 100 and report.sent == 100 and report.delivered == 100
    assert report.drops["lost_in_broker"] == 0 and report.drops["not_sent_disconnected"] == 0
    if qos:
        assert report.acked == 100 and report.delivered_of_acked_pct == 100.0
    assert report.latency_ms["p50"] > 0 and report.connack_ms["p99"] > 0
    assert len(report.generator_cpu_by_process) == 3  # the subscriber's process and two workers
    assert report.generator_cpu_percent == pytest.approx(sum(report.generator_cpu_by_process), abs=0.5)
    assert "generator_warnings" in report.to_dict()


def test_a_generator_process_near_a_whole_core_is_warned_about() -> None:
    assert generator_warnings([40.0, 30.0], 50.0) == []
    (warning,) = generator_warnings([40.0, 97.0], 20.0)
    assert "process(es) 1 used up to 97 % of a core" in warning
    cores = os.cpu_count() or 1
    saturated = generator_warnings([60.0] * cores, 100.0 * cores)
    assert any(f"{cores} cores" in w for w in saturated)
    assert generator_warnings([20.0], 30.0, lag_ms=50.0, duration_s=5.0) == []
    (behind,) = generator_warnings([20.0], 30.0, lag_ms=2855.0, duration_s=5.0)
    assert "2.9 s behind its 5 s schedule" in behind


async def test_a_subscriber_without_the_grant_is_refused(fleet: tuple[GatewayProcess, Path]) -> None:
    gw, root = fleet
    with pytest.raises(PermissionError, match="may not subscribe"):
        await run_load(_options(root, gw.mqtt_port, subscriber="dispatch", subscribe_filter="#"))


async def test_too_few_credentials_is_a_clear_error(fleet: tuple[GatewayProcess, Path]) -> None:
    gw, root = fleet
    with pytest.raises(LookupError, match="50 units asked for"):
        await run_load(_options(root, gw.mqtt_port, units=50))


@pytest.mark.skipif(shutil.which(MOSQUITTO) is None and not Path(MOSQUITTO).exists(), reason="no mosquitto")
async def test_the_same_run_against_mosquitto(fleet: tuple[GatewayProcess, Path]) -> None:
    gw, root = fleet
    policy = load_policy(Path(__file__).parents[2] / "gateway" / "defaults" / "policy.yaml")
    broker = MosquittoBroker(gw.data, root, acl_from_policy(policy))
    broker.start()
    try:
        report = await run_load(_options(root, broker.port, broker_pid=broker.pid, broker_label="mosquitto"))
    finally:
        broker.stop()
    assert report.delivered == report.offered == 100
    assert report.broker == "mosquitto"
