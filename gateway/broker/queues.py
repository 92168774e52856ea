"""Session queues: what waits for a subscriber, within bounds, and what is dropped when one is hit.

Theory of operation
-------------------
A delivery that cannot go out at once (the session is offline, its in-flight window is full, or older
deliveries wait before it) joins the session's queue. Each queue is bounded per session by
`BrokerLimits.max_queued_messages` and `max_queued_bytes` (payload bytes), counted over the whole
queue wherever it is held. Admission, in this order:

1. a QoS 0 delivery to a session at or over its high-water mark (flow.py) is dropped at once:
   at-most-once traffic never takes room that acknowledged messages need, nor memory in a queue
   that is already behind;
2. at the bound, the oldest queued QoS 0 delivery is evicted to make room;
3. if there is still no room, the new delivery is dropped: an acknowledged message lost if it is
   QoS 1/2. Those are counted (drops{queue_full_qos1}; QoS 0: drops{queue_full_qos0}) and the session's
   first one is reported (a `QueueOverflow` event, one audit record); the episode ends when the queue
   is back under half its high-water mark, and the next drop is reported again.

Flow control keeps connected subscribers from getting there (flow.py): their QoS 1/2 publishers are
held back at the high-water mark. The bound is met by offline sessions, stalled subscribers, and
sources that cannot be held back (wills, the gateway's own messages, retained messages on subscribe).

Where a queue lives. A session that ends with its connection: in memory. A persistent session: every
QoS 1/2 delivery is written to the store when it is queued, and memory holds only the head of the
queue, so an offline service is disk, not memory:
- offline: nothing of it (going offline moves the queued QoS 1/2 deliveries to the store only:
  `BrokerState.spill_queue`);
- connected: at most the high-water mark, then `PAGE` at a time, paged in as the head drains
  (`BrokerState.page_in`).
Once one delivery is in the store only, every later one is too, until they have all been paged in:
order is kept. QoS 0 is never written to the store; rule 1 bounds what of it a queue holds in memory.
"""

from __future__ import annotations

from gateway.broker import flow
from gateway.broker.events import QueueOverflow
from gateway.broker.message import Delivery
from gateway.broker.sessions import MqttSession
from gateway.broker.state import BrokerState

PAGE = 256  # store-only deliveries paged into memory at a time


def queue_delivery(st: BrokerState, session: MqttSession, delivery: Delivery, now: float) -> None:
    """Admit a delivery to the session's queue under the rules above, or drop it."""
    limits = st.limits
    size = len(delivery.message.payload)
    if delivery.qos == 0 and flow.over_high_water(st, session):
        _drop(st, session, delivery)
        return
    max_messages, max_bytes = limits.max_queued_messages, limits.max_queued_bytes
    while session.queued >= max_messages or session.queued_bytes + size > max_bytes:
        evicted = session.evict_qos0()
        if evicted is None:
            _drop(st, session, delivery)
            return
        _drop(st, session, evicted)
    if delivery.qos and _store_only(st, session):
        if not session.stored_queued:
            session.stored_after = session.last_seq  # everything in memory is at or below it
        st.persist_delivery(session, delivery, kept=False)
        session.queued += 1
        session.queued_bytes += size
        session.stored_queued += 1
    else:
        st.persist_delivery(session, delivery)
        session.push(delivery)
    flow.note_queued(st, session, now)


def _store_only(st: BrokerState, session: MqttSession) -> bool:
    return (
        session.stored
        and session.persistent
        and (session.stored_queued > 0 or session.conn is None or len(session.queue) >= st.limits.high_water)
    )


def _drop(st: BrokerState, session: MqttSession, delivery: Delivery) -> None:
    session.dropped += 1
    st.forget_delivery(session, delivery)
    if delivery.qos == 0:
        st.metrics.drops["queue_full_qos0"] += 1
        return
    st.metrics.drops["queue_full_qos1"] += 1
    if not session.dropping:
        session.dropping = True
        limits = st.limits
        st.events.append(
            QueueOverflow(
                session.peer,
                session.client_id,
                session.conn is not None,
                session.queued,
                session.queued_bytes,
                limits.max_queued_messages,
                limits.max_queued_bytes,
            )
        )
