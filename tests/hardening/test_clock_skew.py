"""Clock skew: certificate validity is checked by the gateway with `tls.clock_skew_tolerance`.

OpenSSL's own date check is off on the gateway's listeners (gateway/edge/transport.py) so that the window
can be widened by the configured tolerance, the same at the handshake, at CONNECT and on the admin
API. Inside the tolerance a certificate works; past it, it is refused with a precise reason.
"""

from __future__ import annotations

import queue
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests import certs_factory
from tests.clients import Paho
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import api, eventually, metric

TOLERANCE = timedelta(minutes=2)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("skew")
    config = root / "gateway.yaml"
    config.write_text(f"tls:\n  clock_skew_tolerance: {int(TOLERANCE.total_seconds())}\n")
    gateway = GatewayProcess(root, extra_args=("--config", str(config)))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop(signal.SIGTERM)


def _registered_unit(
    gw: GatewayProcess, out: Path, unit_id: str, start: datetime, end: datetime
) -> Credentials:
    """A unit the registry knows, holding a certificate from the gateway's CA valid [start, end]
    (recorded in the registry too: the gateway admits only certificates its CA recorded)."""
    gw.add_unit(unit_id)
    return certs_factory.issued_by_gateway_ca(gw, out, unit_id, start, end - start, record=True)


def _connack(gw: GatewayProcess, creds: Credentials) -> int | None:
    """The CONNACK reason code, or None when the gateway closed the connection without one."""
    client = Paho(gw.mqtt_port, creds)
    try:
        return client.connect(timeout=5)[0]
    except (queue.Empty, OSError):
        return None
    finally:
        client.drop()


@pytest.mark.parametrize(
    ("unit_id", "start", "end"),
    [
        ("TRK-SKEW-LATE", timedelta(hours=-1), timedelta(seconds=-60)),  # expired a minute ago
        ("TRK-SKEW-EARLY", timedelta(seconds=60), timedelta(days=1)),  # valid in a minute
    ],
)
def test_a_certificate_inside_the_tolerance_connects(
    gw: GatewayProcess, tmp_path: Path, unit_id: str, start: timedelta, end: timedelta
) -> None:
    now = datetime.now(UTC)
    creds = _registered_unit(gw, tmp_path, unit_id, now + start, now + end)
    assert _connack(gw, creds) == 0


@pytest.mark.parametrize(
    ("unit_id", "start", "end", "reason"),
    [
        ("TRK-SKEW-EXPIRED", timedelta(hours=-1), timedelta(minutes=-5), "certificate_expired"),
        ("TRK-SKEW-FUTURE", timedelta(minutes=5), timedelta(days=1), "certificate_not_yet_valid"),
    ],
)
def test_a_certificate_past_the_tolerance_is_refused_with_its_reason(
    gw: GatewayProcess, tmp_path: Path, unit_id: str, start: timedelta, end: timedelta, reason: str
) -> None:
    now = datetime.now(UTC)
    creds = _registered_unit(gw, tmp_path, unit_id, now + start, now + end)
    before = metric(gw, "certificates_refused", reason=reason)
    assert _connack(gw, creds) is None  # cut before a single MQTT byte is read
    assert eventually(lambda: metric(gw, "certificates_refused", reason=reason) >= before + 1, 5)


def test_an_operator_certificate_past_the_tolerance_is_refused_by_the_admin_api(
    gw: GatewayProcess, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    creds = certs_factory.issued_by_gateway_ca(
        gw, tmp_path, "OPS-SKEW", now - timedelta(hours=1), timedelta(minutes=50), kind="operator"
    )
    status, body = api(gw, creds, "GET", "/api/units")
    assert status == 403
    assert body["code"] == "certificate_expired"
    assert "expired" in body["error"]
