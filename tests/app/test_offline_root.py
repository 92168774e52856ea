"""Offline root: the CA keys encrypted at rest, the root key exported and removed from the host, the
gateway serving (EST included) with the issuing key alone, and a rotation made with the offline copy."""

from __future__ import annotations

import signal
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.est_client import EstServer, bootstrap, cacerts
from tests.clients import V311, Paho
from tests.harness import Credentials, GatewayProcess, free_port, run_cli
from tests.ops.helpers import eventually

SECRET = "correct horse battery"
ROOT_ENV = {"FLEETGATE_ROOT_KEY_PASSPHRASE": "offline root staple"}


def issuer_of(creds: Credentials) -> str:
    cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    return str(cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def fetch(server: EstServer, path: str) -> bytes:
    with urllib.request.urlopen(f"{server.url}{path}", context=server.context(), timeout=10) as answer:
        return bytes(answer.read())


def connects(gw: GatewayProcess, creds: Credentials) -> bool:
    client = Paho(gw.mqtt_port, creds, version=V311)
    try:
        return client.connect()[0] == 0
    finally:
        client.disconnect()


def test_the_gateway_serves_with_the_root_key_offline_and_rotates_with_its_copy(tmp_path: Path) -> None:
    gw = GatewayProcess(tmp_path, env={"FLEETGATE_CA_PASSPHRASE": SECRET})
    assert gw.cli("init", "--hostname", "localhost", "--hostname", "127.0.0.1").code == 0  # encrypted
    copy = tmp_path / "offline" / "fleet-root.key"
    copy.parent.mkdir()
    assert gw.cli("ca", "export-root-key", str(copy), env=ROOT_ENV).code == 0
    assert gw.cli("ca", "remove-root-key", "--copy", str(copy), env=ROOT_ENV).code == 0
    ca = gw.data / "ca"
    assert not (ca / "root.key").exists()

    # without the passphrase the gateway does not start, and says why in one sentence
    ports = ["--listen-mqtt", f"127.0.0.1:{free_port()}", "--listen-https", f"127.0.0.1:{free_port()}"]
    bare = run_cli("serve", *ports, data=gw.data, env={"FLEETGATE_CA_PASSPHRASE": ""}, timeout=60)
    assert bare.code == 1 and "Traceback" not in bare.stderr
    assert bare.stderr.strip().splitlines()[-1] == (
        f"error: {ca / 'issuing.key'} is encrypted; set FLEETGATE_CA_PASSPHRASE to its passphrase, "
        "or run this command at a terminal to be asked for it"
    )

    gw.start()
    try:
        first = gw.enroll_unit("TRK-OFF1")  # EST signs with the issuing key alone
        assert connects(gw, first) and issuer_of(first) == "fleet.local issuing CA"

        missing = gw.cli("ca", "rotate")
        assert missing.code == 1
        assert missing.stderr.strip() == (
            f"error: the root key is not on this host ({ca / 'root.key'} was taken offline); "
            "pass its copy with --root-key FILE"
        )
        locked = gw.cli("ca", "rotate", "--root-key", str(copy), env={"FLEETGATE_ROOT_KEY_PASSPHRASE": ""})
        assert locked.code == 1 and "set FLEETGATE_ROOT_KEY_PASSPHRASE" in locked.stderr
        rotated = gw.cli("ca", "rotate", "--root-key", str(copy), "--json", env=ROOT_ENV)
        assert rotated.code == 0, rotated.stderr
        assert rotated.json()["generation"] == 2  # type: ignore[index]
        assert not (ca / "root.key").exists()  # the root key was used, not copied back
        assert (ca / "issuing-2.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")

        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: "CA reloaded" in gw.log(), timeout=10), gw.log()
        second = gw.enroll_unit("TRK-OFF2")
        assert issuer_of(second) == "fleet.local issuing CA 2"
        assert connects(gw, second) and connects(gw, first)  # both issuing CAs are trusted
        # EST lists both issuing CAs; each publishes its own CRL, signed with its own key
        server = bootstrap(gw.https_url, ca_file=gw.root_ca)
        listed = {c.subject.rfc4514_string() for c in cacerts(server)}
        assert {"CN=fleet.local issuing CA,O=fleetgate", "CN=fleet.local issuing CA 2,O=fleetgate"} <= listed
        issuing = {n: x509.load_pem_x509_certificate((ca / f"issuing-{n}.crt").read_bytes()) for n in (1, 2)}
        for path, n in (("/crl/1", 1), ("/crl/2", 2), ("/crl", 1)):
            crl = x509.load_der_x509_crl(fetch(server, path))
            key = issuing[n].public_key()
            assert crl.issuer == issuing[n].subject and crl.is_signature_valid(key)  # type: ignore[arg-type]
        assert fetch(server, "/crl.pem").count(b"BEGIN X509 CRL") == 2
    finally:
        gw.stop()
