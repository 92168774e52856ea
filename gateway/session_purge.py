"""Discard the offline MQTT sessions of identities that were cut off (partner disconnect, revocation).

`Broker.disconnect_where` closes live connections, but a persistent session (3.1.1 clean session 0,
5.0 session expiry > 0) outlives its connection with its subscriptions, queue and pending will. A
revoked identity can never resume it (and decide_delivery refuses it everything meanwhile), so
keeping it only holds memory and makes the "subscriptions purged" count a lie.

The broker has no public entry point for this yet, so this module reaches into its state through
the same helper the broker uses for an expired session (`end_session`). It is kept to this one
function so that moving it into `Broker` (say `discard_sessions_where`) is a one-line change here;
tests/ops/test_ops_core.py pins its behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.broker import Action, Broker
from gateway.broker.connect import end_session
from gateway.policy.access import Peer


@dataclass(frozen=True)
class Purged:
    sessions: int
    subscriptions: int
    actions: list[Action]


def discard_offline_sessions(broker: Broker, predicate: Callable[[Peer], bool], now: float) -> Purged:
    """End every offline session whose last peer matches; live ones must be disconnected first."""
    st = broker._st
    victims = [s for s in st.sessions.values() if s.conn is None and s.peer is not None and predicate(s.peer)]
    subscriptions = 0
    for session in victims:
        subscriptions += len(session.subscriptions)
        end_session(st, session, now)
    return Purged(len(victims), subscriptions, broker._finish(now))
