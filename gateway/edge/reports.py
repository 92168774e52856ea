"""Values the edge reports upward (to the audit recorder and the detectors), and nothing else.

Kept apart from the hub so that the modules consuming them need not import the asyncio edge.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HandshakeFailure:
    """Reported for every failed or refused TLS admission."""

    address: str
    reason: str
    at: float
