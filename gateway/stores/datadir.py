"""Where a gateway keeps its state: one directory, laid out the same way everywhere.

DATA/ca/        root.crt root.key issuing.crt issuing.key ca.json   (keys 0600)
DATA/server/    server.crt (leaf + issuing) server.key               (key 0600)
DATA/crl/       crl.der crl.pem                                      (rewritten on every revocation)
DATA/fleetgate.db                                                    (SQLite, WAL)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "var"
DATA_ENV = "FLEETGATE_DATA"
PASSPHRASE_ENV = "FLEETGATE_CA_PASSPHRASE"


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
    def client_ca_bundle(self) -> Path:
        """Root + issuing: what the listeners trust client chains against."""
        return self.ca_dir / "client-ca.pem"

    def is_initialised(self) -> bool:
        return self.root_cert.exists() and self.database.exists()


def ca_passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value else None
