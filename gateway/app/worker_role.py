"""What makes a process one worker of `fleetgate serve --workers N` (gateway/app/workers.py).

A worker is a node of the cluster like any other (its own node name, `<node>-w<i>`, given by the
parent in FLEETGATE_CLUSTER_NODE_NAME), with four differences from a single `fleetgate serve`:
- its listeners bind with SO_REUSEPORT: every worker listens on the same ports;
- its broker state (retained messages, persistent sessions, in-flight QoS 1/2) is in a file of its
  own, DATA/workers/w<i>.db: several brokers must never share those tables;
- the parent holds the data dir's serving lock (DATA/gateway.lock) for all of them;
- it reports in the nodes table (`fleetgate cluster status`) and names itself in its log lines, audit
  records and /metrics, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

WORKERS_DIR = "workers"
# A worker's stop must end even if something in it hangs (the parent, if alive, kills it at 30 s; a
# worker whose parent died has no one else to do it).
STOP_DEADLINE_S = 25.0


@dataclass(frozen=True)
class WorkerRole:
    index: int
    broker_database: Path

    @classmethod
    def of(cls, root: Path, index: int) -> WorkerRole:
        return cls(index, root / WORKERS_DIR / f"w{index}.db")


def worker_node_name(base: str, index: int) -> str:
    return f"{base}-w{index}"


def arm_stop_deadline(seconds: float = STOP_DEADLINE_S) -> threading.Timer:
    """From the moment a worker starts stopping: exit with status 1 if it is still here `seconds`
    later (a daemon thread: it never holds the process up)."""

    def give_up() -> None:
        logging.getLogger("fleetgate").error("the stop did not end within %.0f s; exiting now", seconds)
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    return timer
