"""The live event stream: new audit records as Server-Sent Events (`GET /api/events`).

One `AuditFeed` per gateway polls the audit log (which the gateway and CLI processes both append to)
a few times a second, only while somebody listens, and offers each new record to every subscriber.
A subscriber holds at most `buffer` records: one that does not read fast enough is not allowed to
make the gateway hold more, it is told `event: overflow` with the last id it got, and closed; it
reconnects with `?since=` (or Last-Event-ID) and catches up from the log itself.

Wire format per record: `id: <seq>`, `event: audit`, `data: <the record as JSON>`; a comment line
(`: heartbeat`) every `heartbeat` seconds keeps proxies and the client's read timeout happy.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from gateway.stores.audit_log import AuditLog, AuditRecord

DEFAULT_HEARTBEAT = 15.0
REPLAY_BATCH = 500


class FeedSubscription:
    def __init__(self, buffer: int) -> None:
        self.queue: asyncio.Queue[AuditRecord | None] = asyncio.Queue(maxsize=buffer)
        self.overflowed = False

    def offer(self, record: AuditRecord | None) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self.overflowed = True  # the handler sees it with the next record it takes


class AuditFeed:
    def __init__(
        self, audit: AuditLog, clock: Callable[[], datetime], poll: float = 0.25, buffer: int = 1000
    ) -> None:
        self._audit = audit
        self.clock = clock  # the process's wall clock, for the heartbeat's stamp
        self._poll = poll
        self.buffer = buffer
        self._subs: set[FeedSubscription] = set()
        self._last = 0
        self._closed = False

    def subscribe(self) -> FeedSubscription:
        if not self._subs:
            self._last = self._audit.head()[0]  # idle until now: nothing older is "new"
        sub = FeedSubscription(self.buffer)
        if self._closed:
            sub.offer(None)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: FeedSubscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def poll_once(self) -> int:
        if not self._subs:
            return 0
        records = self._audit.tail_after(self._last, limit=self.buffer)
        for record in records:
            for sub in self._subs:
                sub.offer(record)
        if records:
            self._last = records[-1].seq
        return len(records)

    async def run(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._poll)
            self.poll_once()

    def close(self) -> None:
        """The gateway stops: every stream ends (else the HTTP server would wait for them)."""
        self._closed = True
        for sub in self._subs:
            sub.offer(None)


def _frame(record: AuditRecord) -> bytes:
    data = json.dumps(record.as_dict(), sort_keys=True, ensure_ascii=False)
    return f"id: {record.seq}\nevent: audit\ndata: {data}\n\n".encode()


async def stream_events(
    request: web.Request,
    audit: AuditLog,
    feed: AuditFeed,
    since: int | None,
    heartbeat: float,
    keep: Callable[[AuditRecord], bool] | None = None,
) -> web.StreamResponse:
    """Serve one client: replay after `since` from the log, then follow the feed until it goes away.

    With `keep`, only the records it accepts are sent (the console's fleet events)."""
    sub = feed.subscribe()
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 2000\n: fleetgate audit events\n\n")
        last = audit.head()[0] if since is None else since
        while since is not None:  # catch up in bounded batches
            batch = audit.tail_after(last, limit=REPLAY_BATCH)
            for record in batch:
                if keep is None or keep(record):
                    await response.write(_frame(record))
                last = record.seq
            if len(batch) < REPLAY_BATCH:
                break
        await _follow(response, sub, last, heartbeat, feed.clock, keep)
    except ConnectionResetError:
        pass  # the client went away
    finally:
        feed.unsubscribe(sub)
    return response


async def _follow(
    response: web.StreamResponse,
    sub: FeedSubscription,
    last: int,
    heartbeat: float,
    clock: Callable[[], datetime],
    keep: Callable[[AuditRecord], bool] | None = None,
) -> None:
    while True:
        try:
            record = await asyncio.wait_for(sub.queue.get(), timeout=heartbeat)
        except TimeoutError:
            stamp = clock().isoformat(timespec="seconds")
            await response.write(f": heartbeat {stamp}\n\n".encode())
            continue
        if sub.overflowed:
            data = json.dumps({"resume_from": last, "error": "this client read too slowly; reconnect"})
            await response.write(f"event: overflow\ndata: {data}\n\n".encode())
            return
        if record is None:
            return
        if record.seq > last:  # the replay may already have sent it
            if keep is None or keep(record):
                await response.write(_frame(record))
            last = record.seq
