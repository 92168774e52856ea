"""The Peer a connection presents: who it is, proved by what (policy/access.py is the seam it crosses).

In a module of its own so that it is compiled with the per-message path (gateway/app/compiled.py):
the policy engine, the broker and the context observers read a peer's fields for every message, and
compiled code reads a compiled class's fields from the object, not by name. Its `__init__` is written
out for the same reason (gateway/mqtt/packets.Publish says why).
"""

from __future__ import annotations

from dataclasses import dataclass

from pki.names import Identity


@dataclass(frozen=True, slots=True)
class Peer:
    """What a connection proved about itself before sending a single MQTT byte."""

    address: str  # "host:port" of the remote end
    identity: Identity | None  # from the verified client certificate; None only on the lab listener
    certificate_serial: int | None = None
    certificate_not_after: float | None = None  # epoch seconds

    def __init__(
        self,
        address: str,
        identity: Identity | None,
        certificate_serial: int | None = None,
        certificate_not_after: float | None = None,
    ) -> None:
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "certificate_serial", certificate_serial)
        object.__setattr__(self, "certificate_not_after", certificate_not_after)

    @property
    def is_lab_client(self) -> bool:
        return self.identity is None
