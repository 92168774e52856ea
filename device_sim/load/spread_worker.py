"""One worker process of a spread load run (`python -m device_sim.load.spread_worker`, started by
device_sim.load.spread): it reads its orders (options, its share of the units, its phase) as one JSON
line on stdin, connects its units, says so, waits for the common start time, publishes its share on
schedule and reports what it did, one JSON line each on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from device_sim.load.client import ClientIdentity, LatencySink
from device_sim.load.options import LoadOptions
from device_sim.load.run import _Progress, _publish
from device_sim.load.spread import _line
from device_sim.load.swarm import close_all, connect_crowd, contexts
from device_sim.load.swarm import protocol_version as parse_protocol


async def _worker() -> None:

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = await _line(reader, "its orders")
    raw = spec["options"]
    ca = raw["ca"] = Path(raw["ca"])
    opts = LoadOptions(**raw)
    identities = [ClientIdentity(i, Path(c), Path(k)) for i, c, k in spec["identities"]]
    version = parse_protocol(opts.protocol)
    crowd = await connect_crowd(
        opts.host, opts.port, identities, contexts(identities, ca),
        concurrency=opts.connect_concurrency, version=version, keep_alive=opts.keep_alive,
    )  # fmt: skip
    by_ident = {c.ident: c for c in crowd.clients}
    units = [by_ident.get(i.ident) for i in identities]
    _say(
        {
            "connected": len(crowd.clients),
            "connack_ns": crowd.connack_ns,
            "failures": dict(crowd.failures),
            "started": crowd.started,
            "finished": crowd.finished,
        }
    )
    start = (await _line(reader, "the start"))["start"] + spec["phase"]
    try:
        result = await _publish(
            opts, version, units, None, LatencySink(), _Progress(False), start_at=start, deliveries=False
        )
    finally:
        await close_all(crowd.clients)
    live = crowd.clients
    _say(
        {
            "offered": result.offered,
            "sent": result.sent,
            "drops": result.drops,
            "max_lag_s": result.max_lag_s,
            "cpu_pct": result.generator_cpu or 0.0,
            "refused": sum(c.refused for c in live),
            "acked": sum(c.acked - c.refused for c in live) if opts.qos else 0,
        }
    )


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency on Linux
        asyncio.run(_worker())
    else:
        uvloop.run(_worker())
