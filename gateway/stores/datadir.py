"""Where a gateway keeps its state: one directory, laid out the same way everywhere.

DATA/ca/        root.crt [root.key] ca.json client-ca.pem, and the issuing CAs: issuing.crt (the one
                that issues) with issuing.key, or after a rotation issuing-N.crt/.key per trusted
                one (pki/authority.py). Keys 0600, encrypted with FLEETGATE_CA_PASSPHRASE unless
                `init --insecure-unencrypted-keys`; root.key absent once taken offline.
DATA/server/    server.crt (leaf + issuing) server.key               (key 0600)
DATA/crl/       crl.der (the current issuing CA's) crl.pem (every trusted one's); rewritten on
                every revocation
DATA/fleetgate.db                                                    (SQLite, WAL)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pki.errors import KeyFileError
from pki.keys import PassphraseSource

DEFAULT_DATA_DIR = "var"
DATA_ENV = "FLEETGATE_DATA"
PASSPHRASE_ENV = "FLEETGATE_CA_PASSPHRASE"  # the CA keys on the host (root while there, issuing)
ROOT_PASSPHRASE_ENV = "FLEETGATE_ROOT_KEY_PASSPHRASE"  # the root key's offline copy
# A cluster's shared state (docs/cluster.md); also storage.url in gateway.yaml (FLEETGATE_STORAGE_URL).
DATABASE_URL_ENVS = ("FLEETGATE_STORAGE_URL", "FLEETGATE_DATABASE_URL")


@dataclass(frozen=True)
class DataDir:
    root: Path

    @classmethod
    def resolve(cls, option: str | Path | None) -> DataDir:
        """--data beats $FLEETGATE_DATA beats ./var."""
        chosen = option or os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR
        return cls(Path(chosen).expanduser().absolute())

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def crl_dir(self) -> Path:
        return self.root / "crl"

    @property
    def database(self) -> Path:
        return self.root / "fleetgate.db"

    @property
    def root_cert(self) -> Path:
        return self.ca_dir / "root.crt"

    @property
    def issuing_cert(self) -> Path:
        return self.ca_dir / "issuing.crt"

    @property
    def server_cert(self) -> Path:
        return self.server_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.server_dir / "server.key"

    @property
    def root_key(self) -> Path:
        return self.ca_dir / "root.key"

    @property
    def client_ca_bundle(self) -> Path:
        """Root + every trusted issuing CA, for other TLS servers on the same CA (Mosquitto in the
        benchmarks). The gateway's own listeners build the same set from the CA itself."""
        return self.ca_dir / "client-ca.pem"

    def is_initialised(self) -> bool:
        return self.root_cert.exists() and self.database.exists()


def ca_passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None


def passphrase_from_env(path: Path) -> bytes:
    """A PassphraseSource (pki/keys.py) for the gateway's CA keys: $FLEETGATE_CA_PASSPHRASE or a
    one-sentence refusal naming the key file."""
    passphrase = ca_passphrase()
    if passphrase is None:
        raise KeyFileError(
            "passphrase_required",
            f"the CA key {path} is encrypted; set {PASSPHRASE_ENV} to its passphrase",
        )
    return passphrase


def remembered(source: PassphraseSource) -> PassphraseSource:
    """`source`, asked once: every later key gets the first answer (all CA keys of a data dir share
    one passphrase), so a long-running gateway never asks again, say at a SIGHUP."""
    answers: list[bytes] = []

    def ask(path: Path) -> bytes:
        if not answers:
            answers.append(source(path))
        return answers[0]

    return ask


def shared_database(data: DataDir, url: str = "") -> str:
    """Where the registry and the audit log live: `url` (storage.url), else $FLEETGATE_STORAGE_URL or
    $FLEETGATE_DATABASE_URL, else the SQLite file in the data directory. For pki.sqlite.open_store."""
    for candidate in (url, *(os.environ.get(name, "") for name in DATABASE_URL_ENVS)):
        if candidate.strip():
            return candidate.strip()
    return str(data.database)
