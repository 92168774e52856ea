"""The control plane of a cluster: how a change made on any node reaches this node's live sessions.

Theory of operation
- State lives in PostgreSQL (pki/postgres.py). Every write to an identity or a certificate fires a
  statement trigger that NOTIFYs `fleetgate_registry`; PostgreSQL delivers it at the writer's
  commit to every node LISTENing (pki/store.POSTGRES_MIGRATIONS).
- Each node LISTENs on a connection of its own whose socket the event loop watches (`add_reader`):
  a notification wakes the loop, which drains it and runs the registry follower at once
  (`RegistryFollower.apply_changes`: revocations cut, state changes re-decide, mode commands). No
  timer sits between the commit and the cut; what remains is one round trip to read the change.
- The safety net: the follower still steps every 25 ms and reads the registry's change feeds in
  full every second (REGISTRY_REFRESH_SECONDS), notification or not. A notification lost with a
  dropped connection therefore costs at most a second, and a reconnect counts as a change, so the
  node catches up with everything it missed while the database was away.
- A policy reload (SIGHUP or the admin API) on one node NOTIFYs `policy:<node>`; every other node
  reloads its own copy of the policy file (provisioned alike to every node) and re-decides its live
  sessions, as if it had been sent SIGHUP.
- PostgreSQL unreachable: the listener's socket closes; the reader is removed and `data_version`
  (called by the follower's step) has a thread reopen it, at most once every RECONNECT_EVERY_S (a
  connect to a host that drops packets would hold the event loop for its timeout); the reopening is
  reported as a change, so the first step after the database returns reads every feed since the
  last good read. The stores' own connection reopens the same way (PgConnection, in the serving
  process): statements during an outage fail at once with its one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable

from pki.postgres import Listener

log = logging.getLogger("fleetgate.cluster")

RECONNECT_EVERY_S = 5.0  # between reopening attempts (each in a thread, never on the loop)
POLICY_PREFIX = "policy:"  # a node reloaded its policy: "policy:<node>"


def node_name(configured: str) -> str:
    return configured.strip() or socket.gethostname()


class RegistryNotifications:
    """LISTEN/NOTIFY for the registry follower: `data_version` for its step, `attach` for the push."""

    def __init__(self, url: str, node: str = "") -> None:
        self.node = node
        self._listener = Listener(url)
        self._version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_change: Callable[[], None] | None = None
        self._on_policy: Callable[[str], None] | None = None
        self._watched: int | None = None
        self._next_try = 0.0
        self._reopening: threading.Thread | None = None
        self.pushed = 0  # follower runs started by a notification (for tests and metrics)
        try:
            self._listener.open()
        except sqlite3.OperationalError as exc:
            log.warning("%s; following the registry by its periodic reads until it is back", exc)

    @property
    def connected(self) -> bool:
        return self._listener.connected

    def attach(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        on_policy: Callable[[str], None] | None = None,
    ) -> None:
        """Run `on_change` on the loop as soon as a notification arrives; `on_policy(node)` when
        another node reloaded its policy (each node reloads its own copy of the file)."""
        self._loop, self._on_change, self._on_policy = loop, on_change, on_policy
        self._watch()

    def _policy_reloads(self, payloads: list[str]) -> None:
        for payload in payloads:
            if payload.startswith(POLICY_PREFIX) and self._on_policy is not None:
                origin = payload[len(POLICY_PREFIX) :]
                if origin != self.node:
                    self._on_policy(origin)

    def _watch(self) -> None:
        if self._loop is None or not self._listener.connected or self._watched is not None:
            return
        self._watched = self._listener.fileno()
        self._loop.add_reader(self._watched, self._readable)

    def _unwatch(self) -> None:
        if self._loop is not None and self._watched is not None:
            self._loop.remove_reader(self._watched)
        self._watched = None

    def _readable(self) -> None:
        try:
            payloads = self._listener.drain()
        except sqlite3.OperationalError as exc:
            self._unwatch()
            log.warning("registry notifications stopped: %s", exc)
            return
        if not self._listener.connected:  # the server closed the socket
            self._unwatch()
            return
        self._policy_reloads(payloads)
        if payloads and self._on_change is not None:
            self._version += len(payloads)
            self.pushed += 1
            try:
                self._on_change()
            except sqlite3.Error as exc:  # the supervised step retries; say it once here
                log.warning("following a notified change failed (%s); the periodic read retries", exc)

    def data_version(self) -> int:
        """For RegistryFollower.step: moves whenever a notification arrived or the listener came back."""
        if self._reopening is not None:  # a thread is reopening the listener (never the event loop)
            if self._reopening.is_alive():
                return self._version
            self._reopening = None
            if self._listener.connected:
                log.info("registry notifications are back; catching up with the registry")
                self._version += 1
                self._watch()
            return self._version
        if self._listener.connected:
            if self._watched is None:  # no loop attached (tests, CLI): drain here
                payloads = self._listener.drain()
                self._policy_reloads(payloads)
                self._version += len(payloads)
            return self._version
        self._unwatch()
        now = time.monotonic()
        if now >= self._next_try:
            self._next_try = now + RECONNECT_EVERY_S
            self._listener.close()
            self._reopening = threading.Thread(target=self._reopen, name="pg-listen", daemon=True)
            self._reopening.start()
        return self._version

    def _reopen(self) -> None:
        """In a thread: a connect to a host that drops packets takes CONNECT_TIMEOUT_S."""
        with contextlib.suppress(sqlite3.OperationalError):
            self._listener.open()

    def close(self) -> None:
        self._unwatch()
        self._listener.close()
