"""A lock file that says "a gateway is serving this data dir" (DATA/gateway.lock, flock).

`fleetgate serve` holds it while it runs; the kernel drops it when the process ends, however it
ends (kill -9 included), so it never goes stale. `fleetgate restore` asks it before replacing a data
dir: restoring under a running gateway would leave it writing into files that are no longer there.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

LOCK_NAME = "gateway.lock"

log = logging.getLogger("fleetgate")


def lock_path(root: Path) -> Path:
    return root / LOCK_NAME


def hold(root: Path) -> int | None:
    """Take the lock for as long as this process lives; None (and a warning) if another holds it."""
    fd = os.open(lock_path(root), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        log.warning("another gateway seems to be serving %s already (its %s is locked)", root, LOCK_NAME)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


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
