"""`fleetgate renew`: --expires-in, --exec, and --daemon (its loop driven by a hand-moved clock against
a real gateway, and the real process started and stopped), as a unit's init system would use them."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from gateway.cli.renew_daemon import Daemon, RenewalStopped, Renewer
from pki.est_client import EstClientError
from pki.renewal import Validity
from tests.harness import FLEETGATE, GatewayProcess, run_cli


def _enrolled(gateway: GatewayProcess, unit: str, out: Path) -> Path:
    token = gateway.add_unit(unit)
    run_cli("enroll", "--server", gateway.https_url, "--unit", unit, "--token", token,
            "--ca", str(gateway.root_ca), "--out", str(out), check=True)  # fmt: skip
    return out / f"{unit}.crt"


def _serial(cert: Path) -> str:
    return format(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number, "x")


def test_expires_in_renews_only_when_that_little_is_left_and_exec_follows(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert = _enrolled(gateway, "TRK-RN1", tmp_path / "TRK-RN1")
    key, first = cert.with_suffix(".key"), _serial(cert)
    marker = tmp_path / "reloaded"
    hook = f'echo "$FLEETGATE_SERIAL" >> {marker}'

    kept = run_cli("renew", "--cert", str(cert), "--key", str(key), "--expires-in", "10d", "--exec", hook)
    assert kept.code == 0, kept.stderr
    assert kept.stdout.startswith("Not renewed: TRK-RN1's certificate is valid until")
    assert _serial(cert) == first and not marker.exists()  # nothing renewed, nothing run

    renewed = run_cli("renew", "--cert", str(cert), "--key", str(key), "--expires-in", "40d", "--exec", hook,
                      "--json")  # fmt: skip
    assert renewed.code == 0, renewed.stderr
    answer = renewed.json()
    assert isinstance(answer, dict) and answer["renewed"] is True and answer["serial"] != first
    assert _serial(cert) == answer["serial"] and marker.read_text().split() == [answer["serial"]]

    bad = run_cli("renew", "--cert", str(cert), "--key", str(key), "--jitter", "1h")
    assert bad.code == 2 and "--daemon" in bad.stderr


class Clock:
    """Time that moves only when the daemon sleeps."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)


def _daemon(renewer: Renewer, clock: Clock, events: list[dict[str, Any]], **extra: Any) -> Daemon:
    def renew_once() -> Validity:
        renewer.renew()
        return renewer.validity()

    return Daemon(
        renew_once=extra.pop("renew_once", renew_once), read_validity=renewer.validity, clock=clock,
        sleep=clock.sleep, rng=random.Random(7), report=events.append, **extra,
    )  # fmt: skip


def test_the_daemon_renews_at_two_thirds_of_each_life_with_jitter_and_runs_exec(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert = _enrolled(gateway, "TRK-RN2", tmp_path / "TRK-RN2")
    renewer = Renewer(cert, cert.with_suffix(".key"), None, None)
    start, first = renewer.validity(), _serial(cert)
    clock, events = Clock(start.not_before + timedelta(hours=1)), []
    marker = tmp_path / "reloaded"
    daemon = _daemon(renewer, clock, events, exec_command=f"echo x >> {marker}", exec_env=renewer.exec_env)
    assert daemon.run(max_renewals=2) == 2

    planned = [datetime.fromisoformat(e["at"]) for e in events if e["event"] == "planned"]
    two_thirds = start.not_before + start.lifetime * 2 / 3
    assert two_thirds - timedelta(hours=6) <= planned[0] <= two_thirds  # jitter: earlier, by 6 h at most
    assert [e["event"] for e in events] == ["planned", "renewed", "planned", "renewed"]
    assert marker.read_text().split() == ["x", "x"]  # --exec after each renewal
    assert _serial(cert) != first  # the files hold the newest certificate


def test_the_daemon_retries_what_may_pass_and_stops_at_what_will_not(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert = _enrolled(gateway, "TRK-RN3", tmp_path / "TRK-RN3")
    renewer = Renewer(cert, cert.with_suffix(".key"), None, None)
    clock, events = Clock(renewer.validity().not_before), []
    failures = [EstClientError("cannot reach https://gateway:8443: timed out")] * 2

    def flaky() -> Validity:
        if failures:
            raise failures.pop()
        renewer.renew()
        return renewer.validity()

    assert _daemon(renewer, clock, events, renew_once=flaky).run(max_renewals=1) == 1
    assert [e["event"] for e in events] == ["planned", "failed", "failed", "renewed"]
    assert 15 <= clock.slept[1] <= 30 and 30 <= clock.slept[2] <= 60  # backing off, jittered

    run_cli(
        "cert", "revoke", _serial(cert), "--reason", "keyCompromise", "--force", data=gateway.data, check=True
    )
    with pytest.raises(RenewalStopped, match="refused"):
        _daemon(renewer, Clock(renewer.validity().not_before), []).run(max_renewals=1)
    with pytest.raises(RenewalStopped, match="not shorter than a certificate's whole life"):
        _daemon(renewer, Clock(renewer.validity().not_before), [], expires_in=timedelta(days=60)).run()


def test_the_daemon_process_says_its_plan_and_stops_cleanly_on_sigterm(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    cert = _enrolled(gateway, "TRK-RN4", tmp_path / "TRK-RN4")
    key = cert.with_suffix(".key")
    proc = subprocess.Popen(
        [*FLEETGATE, "renew", "--cert", str(cert), "--key", str(key), "--daemon", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "planned" and event["unit"] == "TRK-RN4"
        assert datetime.fromisoformat(event["at"]) > datetime.fromisoformat(event["not_after"]) - timedelta(
            days=11
        )
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
