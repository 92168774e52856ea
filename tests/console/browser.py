"""A real Chromium (Debian's `chromium` + `chromium-driver`, driven by Selenium) holding an operator's
client certificate the way an enterprise hands one out: in the user's NSS database, picked for the
gateway's address by the AutoSelectCertificateForUrls policy.

- NSS: `certutil`/`pk12util` (libnss3-tools) fill `$HOME/.pki/nssdb` of a throwaway HOME: the fleet
  root as a trusted CA (so the gateway's server certificate verifies, no --ignore-certificate-errors)
  and, when given, the operator's key and certificate chain from a PKCS#12 file. Chromium on Linux
  reads that database from $HOME, which chromedriver passes on.
- Policy: Chromium on Linux reads managed policy only from /etc/chromium/policies/managed (the path
  is compiled in; there is no user-level policy file and no command-line switch for it in release
  builds). Without it, headless Chromium never answers a certificate request. So `managed_policy`
  writes one file there, named for this test process, matching only `https://localhost:<port>` and
  the fleet's issuing CA, and removes it when the test module ends (also after a failure).

Chromium runs headless as root here, hence --no-sandbox; the other switches keep it off the network
(no component updates, sync, QUIC or background requests: the machines have no internet).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.harness import Credentials

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
POLICY_DIR = Path("/etc/chromium/policies/managed")
SWITCHES = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--no-default-browser-check",
)  # fmt: skip
P12_PASSWORD = "fleetgate-test"


def available() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    missing += [t for t in ("certutil", "pk12util") if shutil.which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install chromium chromium-driver libnss3-tools)"
    writable = POLICY_DIR if POLICY_DIR.exists() else next(p for p in POLICY_DIR.parents if p.exists())
    if not os.access(writable, os.W_OK):
        return f"cannot write {POLICY_DIR} for the certificate policy (run as root, or make it writable)"
    return None


@contextmanager
def managed_policy(origin: str, issuer_cn: str) -> Iterator[Path]:
    """Chromium's AutoSelectCertificateForUrls for one origin and issuer, for as long as the block runs."""
    rule = json.dumps({"pattern": origin, "filter": {"ISSUER": {"CN": issuer_cn}}})
    created = [d for d in (POLICY_DIR.parent, POLICY_DIR) if not d.exists()]
    POLICY_DIR.mkdir(parents=True, exist_ok=True)
    for stale in POLICY_DIR.glob("fleetgate-test-*.json"):  # left by a test process that was killed
        pid = stale.stem.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.unlink(missing_ok=True)
    path = POLICY_DIR / f"fleetgate-test-{os.getpid()}.json"
    path.write_text(json.dumps({"AutoSelectCertificateForUrls": [rule]}))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        for made in reversed(created):  # leave /etc as it was found
            if not any(made.iterdir()):
                made.rmdir()


def issuer_cn(creds: Credentials) -> str:
    leaf = x509.load_pem_x509_certificates(creds.cert.read_bytes())[0]
    return str(leaf.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def nss_home(home: Path, root_ca: Path, operator: Credentials | None) -> Path:
    """A HOME whose NSS database trusts the fleet root and, with `operator`, holds its certificate."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    sql = f"sql:{db}"
    subprocess.run(["certutil", "-N", "-d", sql, "--empty-password"], check=True, capture_output=True)
    subprocess.run(
        ["certutil", "-A", "-d", sql, "-n", "fleet root", "-t", "C,,", "-i", str(root_ca)],
        check=True,
        capture_output=True,
    )
    if operator is not None:
        certs = x509.load_pem_x509_certificates(operator.cert.read_bytes())
        key = serialization.load_pem_private_key(operator.key.read_bytes(), None)
        p12 = home / "operator.p12"
        p12.write_bytes(
            pkcs12.serialize_key_and_certificates(
                operator.ident.encode(),
                key,  # type: ignore[arg-type]
                certs[0],
                certs[1:],
                serialization.BestAvailableEncryption(P12_PASSWORD.encode()),
            )
        )
        subprocess.run(
            ["pk12util", "-i", str(p12), "-d", sql, "-W", P12_PASSWORD], check=True, capture_output=True
        )
        p12.unlink()
    return home


def start(home: Path, width: int = 1280, height: int = 800) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for switch in (*SWITCHES, f"--user-data-dir={home / 'profile'}", f"--window-size={width},{height}"):
        options.add_argument(switch)
    service = Service(CHROMEDRIVER, env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(20)
    return driver
