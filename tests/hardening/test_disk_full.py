"""Disk full: the data directory lives on a small tmpfs that is then filled to the last byte.

State changes (unit add, quarantine, EST enrollment) are refused with a clear error and nothing is
half written; QoS 0 routing keeps working; once space is freed everything works again and the audit
chain verifies. Needs root for `mount -t tmpfs` (CI containers here run as root); skipped otherwise.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.device import device_csr
from pki.est_client import EstClientError, bootstrap, simpleenroll
from pki.keys import generate_private_key
from tests.hardening.common import AckLog, Collector, record_figure, v5_client
from tests.harness import GatewayProcess


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> int:
    """Write until ENOSPC (unbuffered, so nothing is left to fail at close); returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 1 << 10, 1):  # big chunks, then the last bytes
            for _ in range(100_000):  # bounded: far above any tmpfs used here
                try:
                    written += os.write(fd, b"\x00" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def test_disk_full_refuses_state_changes_and_keeps_routing(small_disk: Path, tmp_path: Path) -> None:
    (tmp_path / "gw").mkdir()
    gw = GatewayProcess(tmp_path / "gw")
    gw.data = small_disk / "data"
    gw.init()
    gw.start()
    try:
        publisher = gw.enroll_unit("TRK-DF-PUB")
        gw.enroll_unit("TRK-DF-Q")
        pending_token = gw.add_unit("TRK-DF-LATE")
        collector = Collector()
        sub, props = v5_client(gw.issue("service", "dispatch"))
        sub.on_message = collector.on_message
        sub.connect("localhost", gw.mqtt_port, properties=props)
        sub.loop_start()
        sub.subscribe("fleet/+/telemetry/#", qos=0)
        # a persistent-session subscriber, offline: QoS 1 for it must be stored before it is acked
        keeper, keeper_props = v5_client(gw.issue("service", "analytics"), clean=False, expiry=3600)
        keeper.connect("localhost", gw.mqtt_port, clean_start=False, properties=keeper_props)
        keeper.loop_start()
        keeper.subscribe("fleet/+/telemetry/stored", qos=1)
        time.sleep(0.3)
        keeper.disconnect()
        keeper.loop_stop()
        pub, pub_props = v5_client(publisher)
        acks = AckLog()
        pub.on_publish = acks.on_publish
        pub.connect("localhost", gw.mqtt_port, properties=pub_props)
        pub.loop_start()
        time.sleep(0.5)

        filler = small_disk / "filler"
        filled = fill(filler)
        refusals: dict[str, str] = {}
        added = gw.cli("unit", "add", "TRK-DF-NEW", "--json")
        refusals["unit_add"] = added.stderr.strip().splitlines()[-1] if added.stderr.strip() else ""
        quarantined = gw.cli("quarantine", "TRK-DF-Q", "--reason", "disk full test")
        refusals["quarantine"] = (
            quarantined.stderr.strip().splitlines()[-1] if quarantined.stderr.strip() else ""
        )
        server = bootstrap(gw.https_url, ca_file=gw.root_ca)
        try:
            simpleenroll(
                server, "TRK-DF-LATE", pending_token, device_csr(generate_private_key(), "TRK-DF-LATE")
            )
            refusals["enroll"] = ""
        except EstClientError as exc:
            refusals["enroll"] = str(exc)
        for i in range(20):
            pub.publish("fleet/TRK-DF-PUB/telemetry/gps", f"qos0-{i}", qos=0)
            time.sleep(0.02)
        collector.wait_quiet(1.0, 10)
        routed = sum(p.startswith("qos0-") for p in collector.payloads())
        # QoS 1 that must be stored cannot be: it is not acknowledged (the broker closes instead)
        stored = pub.publish("fleet/TRK-DF-PUB/telemetry/stored", b"must-not-be-acked", qos=1)
        acks.sent[stored.mid] = ("must-not-be-acked", 1)
        time.sleep(1.0)
        acked_while_full = acks.acknowledged()
        alive = gw.proc is not None and gw.proc.poll() is None

        filler.unlink()  # space again: nothing half written, and everything works
        after_add = gw.cli("unit", "add", "TRK-DF-NEW", "--json")
        state = gw.cli("unit", "show", "TRK-DF-Q", "--json", check=True).json()
        late = simpleenroll(
            server, "TRK-DF-LATE", pending_token, device_csr(generate_private_key(), "TRK-DF-LATE")
        )
        verify = gw.cli("audit", "verify")
        # committed for real, not left in a transaction a failed COMMIT kept open: another process sees it
        late_state = gw.cli("unit", "show", "TRK-DF-LATE", "--json", check=True).json()
        time.sleep(0.5)
        quarantine_after = gw.cli("quarantine", "TRK-DF-Q", "--reason", "space again")
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()
        record_figure(
            "disk_full",
            filesystem="tmpfs 16 MiB",
            filler_bytes=filled,
            unit_add_exit=added.code,
            quarantine_exit=quarantined.code,
            refusals=refusals,
            qos0_routed_while_full=routed,
            qos1_for_persistent_session_acked_while_full=len(acked_while_full),
            gateway_alive=alive,
            after_free_unit_add_exit=after_add.code,
            audit_verify_exit=verify.code,
        )
        assert alive
        assert routed == 20
        assert added.code != 0 and "Traceback" not in added.stderr and "disk" in refusals["unit_add"].lower()
        assert quarantined.code != 0 and "Traceback" not in quarantined.stderr
        assert "disk" in refusals["quarantine"].lower()
        assert refusals["enroll"] and "disk" in refusals["enroll"].lower()
        assert after_add.code == 0, after_add.stderr
        assert state["state"] != "quarantined"  # type: ignore[index]  # refused means not applied
        assert late is not None  # the token was not burnt by the refused enrollment
        assert late_state["certificates"], late_state  # type: ignore[index]
        assert quarantine_after.code == 0, quarantine_after.stderr
        assert verify.code == 0, verify.stdout + verify.stderr
        assert not acked_while_full  # nothing acknowledged that was not durable
        # a full disk is logged in one line that says what to do, never as a traceback
        assert "Traceback" not in gw.log(), gw.log()[-3000:]
        assert "cannot save broker state (database or disk is full)" in gw.log(), gw.log()[-3000:]
    finally:
        gw.stop(signal.SIGKILL)
