"""The audit chain's status for the console, checked a slice at a time so a page view never stalls.

`AuditLog.verify` walks the whole chain under the log's lock; on a gateway with millions of records
that is seconds during which nothing can be appended and, on the event loop, no MQTT packet moves.
The console's Audit page therefore checks incrementally: each view checks at most `SLICE` records
after the last one checked (seq in order, each record's hash, each link to the one before) and
says how far it got. What it cannot see: a record edited *behind* the point already checked. The
full walk, against the newest anchor, stays `fleetgate audit verify` (docs/operations.md), and the
page says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.stores.audit_log import GENESIS_HASH, AuditLog, record_hash

SLICE = 20_000  # records per page view: ~0.2-0.5 s of hashing at worst


@dataclass
class ChainCheck:
    checked: int = 0  # records 1..checked are intact and linked
    last_hash: str = GENESIS_HASH
    problem: str = ""  # the first problem found; once found it stays

    def step(self, audit: AuditLog, limit: int = SLICE) -> tuple[bool, int, int]:
        """(intact so far, records checked, head seq) after checking up to `limit` more records."""
        if not self.problem:
            for record in audit.records(since_seq=self.checked, limit=limit):
                expected = self.checked + 1
                if record.seq != expected:
                    self.problem = f"record {expected} is missing"
                elif record_hash(record) != record.hash:
                    self.problem = f"record {record.seq} was edited"
                elif record.prev_hash != self.last_hash:
                    self.problem = f"record {record.seq} does not link to record {self.checked}"
                if self.problem:
                    break
                self.checked, self.last_hash = record.seq, record.hash
        return not self.problem, self.checked, audit.head()[0]
