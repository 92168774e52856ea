"""A serving gateway never reconnects to PostgreSQL on its event loop: once its connection is lost,
statements fail at once with the outage's one sentence while a thread reopens it (a host that drops
packets holds a connect for its whole timeout), and the reopened connection is taken up by the next
statement."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

import psycopg
import pytest

import pki.postgres
from pki.postgres import PgConnection
from tests.pg import PgCluster


def test_a_lost_connection_is_reopened_by_a_thread_not_by_the_statement(
    pg_cluster: PgCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_cluster.new_database()
    conn = PgConnection(url)
    conn.reconnect_in_background()
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]

    real_connect = pki.postgres.connect
    connected_from: list[str] = []
    gate = threading.Event()

    def slow_connect(target: str) -> Any:  # like a host that takes its time to answer
        connected_from.append(threading.current_thread().name)
        gate.wait(10)
        return real_connect(target)

    monkeypatch.setattr(pki.postgres, "connect", slow_connect)
    with psycopg.connect(url, autocommit=True) as admin:  # the server drops the gateway's connection
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    with pytest.raises(sqlite3.OperationalError, match="unreachable"):
        conn.execute("SELECT 1")  # the loss itself
    with pytest.raises(sqlite3.OperationalError, match=r"unreachable.*try again"):
        conn.execute("SELECT 1")  # while the thread waits on its connect: at once, one sentence
    gate.set()
    deadline = time.monotonic() + 10
    while True:
        try:
            assert conn.execute("SELECT 41 + 1").fetchone()[0] == 42  # type: ignore[index]
            break
        except sqlite3.OperationalError:
            assert time.monotonic() < deadline, "the connection was not reopened"
            time.sleep(0.05)
    assert connected_from and threading.current_thread().name not in connected_from
    assert set(connected_from) == {"pg-reconnect"}
    conn.close()
