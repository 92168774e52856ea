"""The gateway's pseudonymisation key for partner views (DATA/views.key): made once, owner-only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "views.key"


def load_or_create_key(root: Path) -> bytes:
    """The gateway's pseudonymisation key, made once (32 random bytes, owner-only)."""
    path = root / KEY_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key
