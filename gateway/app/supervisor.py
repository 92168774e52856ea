"""Background loops with an owner: each runs a step every interval, and a step that raises is said
once, in one log line, and retried, so the gateway never goes on silently without following the
registry or auditing.

A failing step (say, an audit append on a full disk) is logged when it starts failing, counted, and
retried with a growing pause (up to MAX_BACKOFF_SECONDS); when it succeeds again that is logged too.
The loops are tasks of the connection hub, cancelled at shutdown like every other task it owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("fleetgate.supervisor")

MAX_BACKOFF_SECONDS = 5.0


@dataclass
class LoopHealth:
    """For /metrics and tests: how a supervised loop is doing."""

    name: str
    failures: int = 0  # steps that raised, in all
    failing: bool = False  # the last step raised
    last_ok: float | None = None  # event-loop time of the last step that worked


async def supervise(step: Callable[[], Awaitable[None] | None], interval: float, health: LoopHealth) -> None:
    """Run `step` every `interval` seconds until cancelled; never let one failure end the loop. A step
    may be a coroutine function (one that gives the event loop back while it works): each run is
    awaited to its end before the pause."""
    pause = interval
    while True:
        await asyncio.sleep(pause)
        try:
            running = step()
            if running is not None:
                await running
        except Exception as exc:
            health.failures += 1
            if not health.failing:
                log.error(
                    "%s failed and is retried until it works (%s: %s); live sessions keep being served",
                    health.name,
                    type(exc).__name__,
                    exc,
                )
            health.failing = True
            pause = min(MAX_BACKOFF_SECONDS, max(pause * 2, interval))
            continue
        health.last_ok = asyncio.get_running_loop().time()
        if health.failing:
            log.warning("%s works again after %d failed attempt(s)", health.name, health.failures)
            health.failing = False
        pause = interval
