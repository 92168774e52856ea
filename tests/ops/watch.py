"""A paho client that keeps everything it receives, so a test can wait for one message and still
compare the whole list at the end (e.g. "exactly these control messages, nothing else")."""

from __future__ import annotations

import queue
import time
from collections.abc import Callable

from tests.clients import V5, Paho, Received
from tests.harness import Credentials, GatewayProcess


class Watch:
    def __init__(
        self, gw: GatewayProcess, creds: Credentials, *filters: str, version: object = V5, clean: bool = True
    ) -> None:
        self.client = Paho(gw.mqtt_port, creds, version=version, clean=clean)  # type: ignore[arg-type]
        assert self.client.connect()[0] == 0
        for topic_filter in filters:
            assert self.client.subscribe(topic_filter, 1) == [1], topic_filter
        self.seen: list[Received] = []

    def _pull(self, timeout: float) -> Received | None:
        try:
            message = self.client.messages.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None
        self.seen.append(message)
        return message

    def wait_for(self, matches: Callable[[Received], bool], timeout: float = 5.0) -> Received:
        for seen in self.seen:
            if matches(seen):
                return seen
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self._pull(left)
            if message is not None and matches(message):
                return message
        raise AssertionError(f"no matching message within {timeout}s; seen: {[m.topic for m in self.seen]}")

    def settle(self, seconds: float = 0.3) -> list[Received]:
        """Collect whatever arrives within `seconds` of quiet."""
        while self._pull(seconds) is not None:
            pass
        return self.seen

    def on(self, prefix: str) -> list[tuple[str, bytes, int]]:
        return [(m.topic, m.payload, m.qos) for m in self.seen if m.topic.startswith(prefix)]

    def close(self) -> None:
        self.client.disconnect()


def topic_is(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic


def payload_is(payload: bytes) -> Callable[[Received], bool]:
    return lambda m: m.payload == payload


def message_is(topic: str, payload: bytes) -> Callable[[Received], bool]:
    return lambda m: (m.topic, m.payload) == (topic, payload)
