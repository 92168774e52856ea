"""The broker: a pure routing core driven by the transport (bytes, losses, ticks in; actions out)."""

from gateway.broker.actions import Action, Close, PauseReading, ResumeReading, Send
from gateway.broker.core import Broker
from gateway.broker.events import (
    BrokerEvent,
    CertificateExpired,
    ClientConnected,
    ClientDisconnected,
    ConnectRefused,
    DeliveryDenied,
    ProtocolViolation,
    PublishDenied,
    QueueOverflow,
    SessionDiscarded,
    SessionTakenOver,
    SubscribeDenied,
    WillDropped,
)
from gateway.broker.limits import BrokerLimits, BrokerMetrics, SessionInfo
from gateway.broker.persistence import BrokerStore, InMemoryStore

__all__ = [
    "Action",
    "Broker",
    "BrokerEvent",
    "BrokerLimits",
    "BrokerMetrics",
    "BrokerStore",
    "CertificateExpired",
    "ClientConnected",
    "ClientDisconnected",
    "Close",
    "ConnectRefused",
    "DeliveryDenied",
    "InMemoryStore",
    "PauseReading",
    "ProtocolViolation",
    "PublishDenied",
    "QueueOverflow",
    "ResumeReading",
    "Send",
    "SessionDiscarded",
    "SessionInfo",
    "SessionTakenOver",
    "SubscribeDenied",
    "WillDropped",
]
