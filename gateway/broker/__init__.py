"""The broker: a pure routing core driven by the transport (bytes, losses, ticks in; actions out)."""

from gateway.broker.actions import Action, Close, Send
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
    "ProtocolViolation",
    "PublishDenied",
    "Send",
    "SessionDiscarded",
    "SessionInfo",
    "SessionTakenOver",
    "SubscribeDenied",
    "WillDropped",
]
