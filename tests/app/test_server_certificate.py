"""The gateway's own certificate, re-issued for new host names without a new CA: `fleetgate
server-cert issue`, then a reload (SIGHUP) serves it to new connections and signs the retained mode
commands again with the new key; a pair that does not load changes nothing."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.clients import V311, Paho
from tests.harness import Credentials, GatewayProcess
from tests.ops.helpers import audit_records, eventually

NEW_NAME = "gw.fleet.example"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(tmp_path_factory.mktemp("servercert"))
    gateway.init()
    gateway.start()
    yield gateway
    gateway.stop()


def served_certificate(gw: GatewayProcess, creds: Credentials, name: str) -> x509.Certificate:
    """Handshake as a unit that reaches the gateway by `name`; raises if the name does not match."""
    context = gw.client_context(creds)
    with (
        socket.create_connection(("127.0.0.1", gw.mqtt_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def served_once_reloaded(gw: GatewayProcess, creds: Credentials, name: str) -> x509.Certificate:
    """The certificate served for `name`, waiting (up to 10 s) for the reload the signal asked for."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return served_certificate(gw, creds, name)
        except ssl.SSLCertVerificationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def retained_mode(gw: GatewayProcess, creds: Credentials) -> dict[str, str]:
    client = Paho(gw.mqtt_port, creds, version=V311)
    try:
        assert client.connect()[0] == 0
        assert client.subscribe(f"fleet/{creds.ident}/cmd/mode") == [1]
        [message] = client.expect(1, timeout=5)
        return dict(json.loads(message.payload))
    finally:
        client.disconnect()


def test_a_new_host_name_is_served_after_a_reload_and_mode_commands_are_signed_again(
    gw: GatewayProcess,
) -> None:
    unit = gw.enroll_unit("TRK-SC1")
    assert gw.cli("quarantine", "TRK-SC1", "--reason", "tamper alarm").code == 0
    old = served_certificate(gw, unit, "localhost")
    with pytest.raises(ssl.SSLCertVerificationError):  # the README's own example, before
        served_certificate(gw, unit, NEW_NAME)
    old_signer = eventually(lambda: retained_mode(gw, unit))["signer"]
    assert old_signer == old.fingerprint(hashes.SHA256()).hex()

    issued = gw.cli("server-cert", "issue", "--hostname", NEW_NAME, "--json")
    assert issued.code == 0, issued.stderr
    facts = issued.json()
    assert isinstance(facts, dict) and facts["hostnames"][:2] == [NEW_NAME, "localhost"]

    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    new = served_once_reloaded(gw, unit, NEW_NAME)
    assert new.fingerprint(hashes.SHA256()).hex() == facts["sha256"] != old_signer
    assert served_certificate(gw, unit, "localhost") == new  # the loopback names stay
    command = eventually(lambda: (c := retained_mode(gw, unit))["signer"] == facts["sha256"] and c)
    assert command["mode"] == "diagnostic-only"  # re-signed, still quarantined
    actions = [r["action"] for r in audit_records(gw)]
    assert "server.certificate_issued" in actions and "server.certificate_reloaded" in actions


def test_a_pair_that_does_not_load_is_refused_and_the_gateway_keeps_serving(gw: GatewayProcess) -> None:
    unit = gw.enroll_unit("TRK-SC2")
    before = served_certificate(gw, unit, "localhost")
    cert_file = gw.data / "server" / "server.crt"
    saved = cert_file.read_bytes()
    other = gw.clients / "unit" / "TRK-SC2.crt"  # a valid certificate, but not for the server's key
    cert_file.write_bytes(other.read_bytes())
    try:
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        eventually(lambda: "server certificate reload refused" in gw.log())
        assert served_certificate(gw, unit, "localhost") == before
    finally:
        cert_file.write_bytes(saved)
