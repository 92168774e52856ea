"""Rotating the issuing CA under a live fleet, without re-enrolling it.

Fifty simulated units (device_sim's fleet runner: real keys, paho over mTLS, EST renewal) stay
connected while `fleetgate ca rotate` and a SIGHUP put a new issuing CA in charge; each then renews
at its (here: requested) renewal over EST simplereenroll onto the new issuing CA and reconnects with
it. A fifty-first unit, offline meanwhile, shows the overlap (its old certificate still connects) and
holds up `fleetgate ca retire` until it renews too; after the retirement and a reload its old
certificate is refused at the handshake and by EST. No token is issued and nothing enrolls again.
"""

from __future__ import annotations

import asyncio
import queue
import shutil
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from device_sim.attacks.arena import watch
from device_sim.fleet.enroll import load_fleet
from device_sim.fleet.runner import Fleet, FleetConfig
from device_sim.fleet.unit import UnitProfile
from device_sim.load.identities import BulkIssuer, unit_ids
from tests.clients import V311, Paho
from tests.harness import CliResult, Credentials, GatewayProcess, run_cli
from tests.ops.helpers import audit_records, metric

# ~17 s here (13 s in the test, 4 s of fixture): under the 20 s that would make it `slow`.
UNITS = 50
LATE = "TRK-LATE"
QUIET = UnitProfile(gps_interval=5.0, engine_interval=10.0, fuel_interval=60.0, diag_interval=60.0)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path)
    gateway.init()
    with BulkIssuer(gateway.data) as issuer:  # enrolled once, with one token each, as a fleet is
        issuer.units(unit_ids(UNITS), tmp_path / "units")
        issuer.units([LATE], tmp_path / "late")
    gateway.start()
    yield gateway
    gateway.stop()


def issuer_name(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return str(cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def connects(creds: Credentials, port: int) -> bool:
    """A real MQTT CONNECT with this certificate: True if accepted, False if the gateway refused it."""
    client = Paho(port, creds, version=V311)
    try:
        return client.connect(timeout=5)[0] == 0
    except (OSError, TimeoutError, queue.Empty):  # refused at the handshake: no CONNACK ever comes
        return False
    finally:
        client.client.disconnect()
        client.client.loop_stop()


def renew(gw: GatewayProcess, creds: Credentials) -> CliResult:
    return run_cli(
        "renew",
        "--cert",
        str(creds.cert),
        "--key",
        str(creds.key),
        "--server",
        gw.https_url,
        "--ca",
        str(creds.ca),
    )


def reloaded(gw: GatewayProcess, times: int) -> bool:
    return gw.log().count("CA reloaded") >= times


async def test_fifty_connected_units_move_to_a_new_issuing_ca_and_the_old_one_is_retired(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    assert gw.proc is not None
    ca = gw.data / "ca"
    late = Credentials(LATE, tmp_path / "late" / f"{LATE}.crt", tmp_path / "late" / f"{LATE}.key", gw.root_ca)
    old_late = tmp_path / "old-late"  # the straggler's first certificate, kept to try it after retirement
    shutil.copytree(tmp_path / "late", old_late)
    old = Credentials(LATE, old_late / f"{LATE}.crt", old_late / f"{LATE}.key", gw.root_ca)
    config = FleetConfig(port=gw.mqtt_port, est_url=gw.https_url, profile=QUIET, backoff_base=0.2)
    async with Fleet(config, load_fleet(tmp_path / "units")) as fleet:
        assert await fleet.wait_online(timeout=30) == UNITS

        # 1. rotation while they are connected, then a reload
        rotated = await asyncio.to_thread(gw.cli, "ca", "rotate", "--json")
        assert rotated.code == 0, rotated.stderr
        gw.proc.send_signal(signal.SIGHUP)
        assert await watch(lambda: reloaded(gw, 1), 15), gw.log()
        await asyncio.sleep(0.5)
        totals = fleet.totals()
        assert (fleet.ready, totals.connects, totals.sessions_lost, totals.connect_failures) == (
            UNITS,
            UNITS,
            0,
            0,
        )
        # the overlap: a unit still on the old issuing CA connects, and sees the re-issued server certificate
        assert await asyncio.to_thread(connects, late, gw.mqtt_port)
        assert issuer_name(gw.data / "server" / "server.crt") == "fleet.local issuing CA 2"

        # 2. each unit renews over EST (simplereenroll, mTLS with its old certificate) and reconnects
        for unit in fleet.units.values():
            unit.renew_soon()
        assert await watch(lambda: all(u.stats.renewals == 1 and u.ready for u in fleet.units.values()), 45)
        totals = fleet.totals()
        assert (totals.connects, totals.sessions_lost, totals.connect_failures) == (2 * UNITS, 0, 0)
        files = sorted((tmp_path / "units").glob("TRK-*.crt"))
        assert len(files) == UNITS and {issuer_name(f) for f in files} == {"fleet.local issuing CA 2"}
        anchors = ["-CAfile", str(gw.root_ca), "-untrusted", str(ca / "issuing-2.crt")]
        verified = subprocess.run(
            ["openssl", "verify", *anchors, *map(str, files)], capture_output=True, text=True, check=False
        )
        assert verified.returncode == 0 and verified.stdout.count(": OK") == UNITS, (
            verified.stdout + verified.stderr
        )

        # 3. retirement waits for the straggler, which renews the same way
        status = (await asyncio.to_thread(gw.cli, "ca", "status", "--json")).json()
        in_use = {row["generation"]: row["in_use"] for row in status["issuing"]}  # type: ignore[index]
        assert in_use == {1: 1, 2: UNITS}
        refused = await asyncio.to_thread(gw.cli, "ca", "retire", "1")
        assert refused.code == 1
        assert "1 certificate(s) in use were issued by issuing CA 1 (e.g. unit/TRK-LATE)" in refused.stderr
        renewed = await asyncio.to_thread(renew, gw, late)  # `fleetgate renew` on the truck
        assert renewed.code == 0, renewed.stderr
        assert issuer_name(late.cert) == "fleet.local issuing CA 2"
        retired = await asyncio.to_thread(gw.cli, "ca", "retire", "1", "--json")
        assert retired.code == 0, retired.stderr
        assert retired.json() == {"generation": 1, "revoked": UNITS + 1, "forced_in_use": 0}
        gw.proc.send_signal(signal.SIGHUP)
        assert await watch(lambda: reloaded(gw, 2), 15), gw.log()

        # 4. a certificate from the retired issuing CA is refused: at the MQTT handshake, and by EST
        assert not await asyncio.to_thread(connects, old, gw.mqtt_port)
        assert metric(gw, "handshakes_failed", reason="certificate_verify_failed") >= 1
        again = await asyncio.to_thread(renew, gw, old)
        assert again.code == 1 and "revoked" in again.stderr
        assert await asyncio.to_thread(connects, late, gw.mqtt_port)  # its renewed certificate is fine
        # the fleet never noticed
        await asyncio.sleep(0.5)
        totals = fleet.totals()
        assert (fleet.ready, totals.connects, totals.sessions_lost, totals.connect_failures) == (
            UNITS, 2 * UNITS, 0, 0,
        )  # fmt: skip

    # nothing enrolled again: no token, no enrollment; every unit's second certificate renews its first
    records = await asyncio.to_thread(audit_records, gw)
    actions = [r["action"] for r in records]
    assert not {"unit.add", "unit.token", "est.enroll"} & set(actions)
    assert sum(1 for r in records if r["action"] == "est.reenroll" and r["outcome"] == "ok") == UNITS + 1
    certificates = (await asyncio.to_thread(gw.cli, "cert", "list", "--kind", "unit", "--json")).json()
    lineage: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in certificates:  # type: ignore[union-attr]
        lineage[row["identity"]].append(row)  # type: ignore[index]
    assert len(lineage) == UNITS + 1
    for rows in lineage.values():
        first, second = rows
        assert second["renewed_from"] == first["serial"] and not first["renewed_from"]
        assert (first["status"], first["revocation_reason"]) == ("revoked", "superseded")
        assert second["status"] == "valid"
