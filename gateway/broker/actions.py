"""What the broker asks the transport to do: small frozen values, nothing else.

The broker never touches a socket. Every entry point returns a list of actions; the transport applies
them in order (reading pauses and resumptions first: they concern the socket's input, not the order
of its output). `Outbox` collects them during one entry-point call and coalesces the bytes for each
connection into a single Send, so a fan-out of a hundred PUBLISH packets to one subscriber costs the
transport one write, and a Close always comes after the last Send for its connection.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes to that connection."""

    conn: int
    data: bytes

    def __init__(self, conn: int, data: bytes) -> None:
        # Written out: compiled, a direct write (gateway/mqtt/packets.Publish says why).
        object.__setattr__(self, "conn", conn)
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class Close:
    """Flush pending Sends for `conn`, then close its socket."""

    conn: int
    reason: str  # stable snake_case for metrics and logs, e.g. "keep_alive_timeout"


@dataclass(frozen=True, slots=True)
class PauseReading:
    """Stop reading from `conn` (its sender is held back: flow.py); writing to it goes on."""

    conn: int


@dataclass(frozen=True, slots=True)
class ResumeReading:
    """Read from `conn` again."""

    conn: int


Action = Send | Close | PauseReading | ResumeReading


class Outbox:
    """Actions produced during one broker call, in the order the transport must apply them."""

    __slots__ = ("_chunks", "_closes", "_order", "_reading", "nbytes")

    def __init__(self) -> None:
        self._chunks: dict[int, list[bytes]] = {}
        self._closes: dict[int, str] = {}
        self._order: dict[int, None] = {}  # first-touch order of connections (an ordered set)
        self._reading: dict[int, bool] = {}  # conn → read from it (True) or not: the last word counts
        self.nbytes = 0  # bytes in the Sends (the broker's bytes_out counter)

    def send(self, conn: int, data: bytes) -> None:
        if not data or conn in self._closes:
            return  # nothing may follow a Close: the connection is gone for the broker
        self.nbytes += len(data)
        chunks = self._chunks.get(conn)
        if chunks is None:
            self._chunks[conn] = [data]
            self._order[conn] = None
        else:
            chunks.append(data)

    def close(self, conn: int, reason: str) -> None:
        if conn in self._closes:
            return
        self._order[conn] = None
        self._closes[conn] = reason

    def pause(self, conn: int) -> None:
        self._reading[conn] = False

    def resume(self, conn: int) -> None:
        self._reading[conn] = True

    def discard_sends(self, conn: int) -> None:
        """Forget bytes queued for `conn` (e.g. acks whose durability could not be guaranteed)."""
        chunks = self._chunks.pop(conn, None)
        if chunks:
            self.nbytes -= sum(map(len, chunks))

    def is_closing(self, conn: int) -> bool:
        return conn in self._closes

    def actions(self) -> list[Action]:
        if not self._closes and not self._reading:
            # Sends only (nearly every call): without a Close, first-touch order is _chunks' own order.
            return [Send(conn, c[0] if len(c) == 1 else b"".join(c)) for conn, c in self._chunks.items() if c]
        out: list[Action] = [
            PauseReading(conn) if not reading else ResumeReading(conn)
            for conn, reading in self._reading.items()
            if conn not in self._closes
        ]
        for conn in self._order:
            chunks = self._chunks.get(conn)
            if chunks:
                out.append(Send(conn, chunks[0] if len(chunks) == 1 else b"".join(chunks)))
            reason = self._closes.get(conn)
            if reason is not None:
                out.append(Close(conn, reason))
        return out
