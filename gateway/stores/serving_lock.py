"""A lock file that says "a gateway is serving this data dir" (DATA/gateway.lock, flock).

`fleetgate serve` holds it while it runs; the kernel drops it when the process ends, however it
ends (kill -9 included), so it never goes stale. `fleetgate restore` asks it before replacing a data
dir: restoring under a running gateway would leave it writing into files that are no longer there.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "gateway.lock"


def lock_path(root: Path) -> Path:
    return root / LOCK_NAME


class AlreadyServed(RuntimeError):
    """Another gateway process serves this data directory; the message says what to do."""


def hold(root: Path) -> int:
    """Take the lock for as long as this process lives; AlreadyServed if another process holds it
    (two gateways on one data directory would interleave one audit chain and one broker state)."""
    fd = os.open(lock_path(root), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = _holder(root)
        raise AlreadyServed(
            f"another gateway{holder} is already serving {root}; stop it first, or give this one "
            "its own data directory with --data"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _holder(root: Path) -> str:
    try:
        pid = lock_path(root).read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def is_served(root: Path) -> bool:
    """Is a gateway holding the lock on this data dir right now?"""
    path = lock_path(root)
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
