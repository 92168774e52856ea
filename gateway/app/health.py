"""`GET /healthz` and `GET /readyz`: what a load balancer, an orchestrator or an operator's probe asks.

- /healthz: the process answers (its event loop runs). Always 200 while it does.
- /readyz: it can do its job now — the MQTT and HTTPS listeners are bound, the state store takes a
  write, and the registry follower has worked recently (so revocations and quarantines still reach
  live sessions). 200 if all hold, else 503 naming the checks that fail.

Both are unauthenticated and say nothing but check names and ok/failing: no counts, versions or
addresses (those are on /metrics, which is not for everybody).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from gateway.app.supervisor import LoopHealth

PROBE_BUSY_MS = 200
FOLLOWER_STALE_SECONDS = 5.0  # the follower steps every 25 ms; 5 s without a good step is not ready


@dataclass(frozen=True)
class ReadinessProbe:
    listeners: Callable[[], set[str]]  # names of the listeners bound right now
    required_listeners: frozenset[str]
    database: sqlite3.Connection
    follower: LoopHealth
    loop_time: Callable[[], float]

    def checks(self) -> dict[str, bool]:
        return {
            "listeners": self.required_listeners <= self.listeners(),
            "store_writable": self._store_writable(),
            "registry_followed": self._followed(),
        }

    def _store_writable(self) -> bool:
        # Take the write lock and let it go: the file and the disk allow writes, and no other writer
        # holds the database. Waiting at most PROBE_BUSY_MS, not the connection's usual busy timeout:
        # the probe runs on the event loop.
        (usual,) = self.database.execute("PRAGMA busy_timeout").fetchone()
        try:
            self.database.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_MS}")
            self.database.execute("BEGIN IMMEDIATE")
            self.database.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        finally:
            self.database.execute(f"PRAGMA busy_timeout = {int(usual)}")
        return True

    def _followed(self) -> bool:
        last = self.follower.last_ok
        return last is not None and self.loop_time() - last < FOLLOWER_STALE_SECONDS


def add_health_routes(app: web.Application, probe: ReadinessProbe) -> None:
    async def healthz(request: web.Request) -> web.Response:
        return _answer(200, {"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        checks = probe.checks()
        ready = all(checks.values())
        body = {
            "status": "ready" if ready else "not_ready",
            "checks": {k: "ok" if v else "failing" for k, v in checks.items()},
        }
        return _answer(200 if ready else 503, body)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def _answer(status: int, body: Mapping[str, object]) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
