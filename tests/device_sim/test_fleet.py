"""The fleet runner against a live gateway: enrollment, mixed protocols, control acks, reconnects with
backoff, renewal at 2/3 of the certificate's life, quarantine obeyed, a polite stop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from device_sim.attacks.arena import watch
from device_sim.fleet.dispatch import Dispatch
from device_sim.fleet.enroll import UnitFiles, enroll_fleet, fleetgate, load_fleet, register_units
from device_sim.fleet.runner import Fleet, FleetConfig, protocol_for
from device_sim.fleet.unit import MODE_DIAGNOSTIC, MODE_NORMAL, UnitProfile
from tests.harness import GatewayProcess

FAST = UnitProfile(gps_interval=0.5, engine_interval=1.0, fuel_interval=2.0, diag_interval=1.0)


def enroll(gateway: GatewayProcess, count: int, out: Path) -> dict[str, UnitFiles]:
    tag = uuid.uuid4().hex[:6].upper()
    ids = [f"SIM-{tag}-{n}" for n in range(count)]
    return enroll_fleet(gateway.https_url, gateway.root_ca, register_units(gateway.data, ids), out)


def config(gateway: GatewayProcess, **changes: object) -> FleetConfig:
    base: dict[str, object] = {"port": gateway.mqtt_port, "profile": FAST, "backoff_base": 0.2}
    return FleetConfig(**{**base, **changes})  # type: ignore[arg-type]


async def dispatch_for(gateway: GatewayProcess) -> Dispatch:
    creds = gateway.issue("service", "dispatch")
    service = Dispatch(UnitFiles(creds.cert, creds.key, creds.ca), "localhost", gateway.mqtt_port)
    await service.start()
    return service


def test_protocols_alternate_in_a_mixed_fleet() -> None:
    assert [protocol_for(i, "mixed") for i in range(4)] == ["3.1.1", "5.0", "3.1.1", "5.0"]
    assert protocol_for(3, "3.1.1") == "3.1.1"
    with pytest.raises(ValueError, match="protocol"):
        FleetConfig(protocol="4.0")


def test_bulk_enrollment_writes_keys_only_the_owner_can_read(gateway: GatewayProcess, tmp_path: Path) -> None:
    files = enroll(gateway, 5, tmp_path / "units")
    assert len(files) == 5 and load_fleet(tmp_path / "units") == files
    for unit, f in files.items():
        assert f.key.stat().st_mode & 0o077 == 0
        cert = x509.load_pem_x509_certificate(f.cert.read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={unit}"


async def test_a_mixed_fleet_drives_reports_and_answers_control(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    files = enroll(gateway, 4, tmp_path)
    dispatch = await dispatch_for(gateway)
    try:
        async with Fleet(config(gateway), files) as fleet:
            assert await fleet.wait_online(timeout=20) == 4
            assert fleet.by_protocol() == {"3.1.1": 2, "5.0": 2}
            await asyncio.sleep(2.5)
            for unit in sorted(files)[:2]:  # one 3.1.1 unit, one 5.0 unit
                result = await dispatch.send_control(unit, "speed-limit", {"kmh": 60})
                assert result.puback == 0 and result.delivered, result
            totals = fleet.totals()
        assert totals.refused == 0 and totals.connect_failures == 0 and totals.subscribe_refused == 0
        assert totals.sent > 4 * 6 and totals.acked + totals.unacked >= totals.sent - 8
        for unit in files:
            seen = dispatch.unit(unit)
            assert seen.telemetry["gps"] >= 3 and seen.telemetry["engine"] >= 1
            fix = json.loads(seen.fixes[-1][1])
            assert set(fix) == {"lat", "lon", "ts", "speed_kmh", "heading", "driver_id"}  # pii, for views
            assert json.loads(seen.state)["online"] is True
    finally:
        await dispatch.stop()


async def test_a_lost_connection_comes_back_with_backoff_and_the_will_fires(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    files = enroll(gateway, 2, tmp_path)
    dispatch = await dispatch_for(gateway)
    try:
        async with Fleet(config(gateway), files) as fleet:
            assert await fleet.wait_online(timeout=20) == 2
            unit = fleet.units[sorted(files)[0]]
            unit.drop()
            # the will ({"online": false}); the unit may already be back, so its last state may not say so
            assert await watch(lambda: dispatch.unit(unit.unit_id).offline_reports >= 1, 15)
            assert await watch(lambda: unit.ready and unit.stats.connects == 2, 30)
            assert unit.stats.sessions_lost == 1
    finally:
        await dispatch.stop()


async def test_a_polite_stop_fires_no_wills(gateway: GatewayProcess, tmp_path: Path) -> None:
    files = enroll(gateway, 2, tmp_path)
    dispatch = await dispatch_for(gateway)
    try:
        async with Fleet(config(gateway), files) as fleet:
            assert await fleet.wait_online(timeout=20) == 2
        await asyncio.sleep(0.5)
        assert all(json.loads(dispatch.unit(u).state)["online"] is True for u in files)
    finally:
        await dispatch.stop()


async def test_units_renew_at_the_configured_fraction_and_reconnect_with_the_new_certificate(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    files = enroll(gateway, 1, tmp_path)
    [(unit_id, f)] = files.items()
    cert = x509.load_pem_x509_certificate(f.cert.read_bytes())
    begin, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    # The fraction of this 30-day certificate's life that ends 2 s from now: the automatic path, quickly.
    fraction = (time.time() + 2.0 - begin) / (end - begin)
    async with Fleet(config(gateway, est_url=gateway.https_url, renew_fraction=fraction), files) as fleet:
        unit = fleet.units[unit_id]
        assert await fleet.wait_online(timeout=10) == 1
        assert unit.stats.renewals == 0
        assert await watch(lambda: unit.stats.renewals == 1 and unit.ready, 15)
        assert unit.stats.connects == 2 and unit.stats.connect_failures == 0
        assert unit.stats.sessions_lost == 0  # it left politely to come back with the new certificate
    renewed = x509.load_pem_x509_certificate(f.cert.read_bytes())
    assert renewed.serial_number != cert.serial_number
    assert f.key.stat().st_mode & 0o077 == 0


async def test_a_refused_unit_backs_off(gateway: GatewayProcess, tmp_path: Path) -> None:
    files = enroll(gateway, 1, tmp_path)
    [(unit_id, f)] = files.items()
    serial = format(x509.load_pem_x509_certificate(f.cert.read_bytes()).serial_number, "x")
    fleetgate(gateway.data, "cert", "revoke", serial, "--force")
    await asyncio.sleep(0.6)  # the gateway follows the registry within a fraction of a second
    async with Fleet(config(gateway, backoff_base=0.1, backoff_cap=0.8), files) as fleet:
        await asyncio.sleep(3.0)
        stats = fleet.units[unit_id].stats
    # Attempts are spaced by a growing, capped, jittered delay: a handful in 3 s, not hundreds.
    assert stats.connects == 0 and 2 <= stats.connect_failures <= 25
    assert "before CONNACK" in stats.last_failure


async def test_units_obey_quarantine_and_keep_answering_control(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    if "quarantine" not in getattr(__import__("gateway.cli", fromlist=["cli"]).cli, "commands", {}):
        pytest.skip("this gateway has no `fleetgate quarantine` yet")
    files = enroll(gateway, 2, tmp_path)
    unit_id = sorted(files)[1]  # MQTT 5.0
    dispatch = await dispatch_for(gateway)
    try:
        async with Fleet(config(gateway), files) as fleet:
            assert await fleet.wait_online(timeout=20) == 2
            unit = fleet.units[unit_id]
            fleetgate(gateway.data, "quarantine", unit_id, "--reason", "test")
            assert await watch(lambda: unit.behaviour.mode == MODE_DIAGNOSTIC, 5)
            # A telemetry PUBLISH already on its way when the quarantine took effect is refused
            # (0x87) before the unit hears of its mode; from the mode on, it must try nothing.
            refused_before_mode = unit.stats.refused
            await asyncio.sleep(0.5)
            before = dispatch.unit(unit_id).total
            result = await dispatch.send_control(unit_id, "brake", {"level": 1})
            assert result.delivered
            await asyncio.sleep(1.5)
            assert dispatch.unit(unit_id).total == before  # its telemetry stopped (it stopped sending)
            assert unit.stats.refused == refused_before_mode  # and, told, it tried nothing it may not
            fleetgate(gateway.data, "release", unit_id)
            assert await watch(lambda: unit.behaviour.mode == MODE_NORMAL, 5)
            assert await watch(lambda: dispatch.unit(unit_id).total > before, 5)
    finally:
        await dispatch.stop()


async def test_connect_times_are_recorded(gateway: GatewayProcess, tmp_path: Path) -> None:
    files = enroll(gateway, 3, tmp_path)
    started = time.monotonic()
    async with Fleet(config(gateway, protocol="5.0"), files) as fleet:
        assert await fleet.wait_online(timeout=20) == 3
        samples = fleet.totals().connect_ms
    assert len(samples) == 3 and all(0 < s < (time.monotonic() - started) * 1000 for s in samples)
