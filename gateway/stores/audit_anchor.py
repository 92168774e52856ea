"""Anchors for the audit log outside its database: the head (seq, hash), MACed, in a file and the log.

Why: the chain and the `audit_head` row live in the same SQLite file. Whoever can write that file can
drop the triggers, delete the newest records and set the head to the last one kept, and the chain
still verifies (the review reproduced it). An anchor is a copy of the head kept elsewhere: the gateway
writes one at every start, at every stop, and every `storage.audit_anchor_interval` seconds while the
head moves, to `DATA/audit-anchors.log` (append-only, one JSON line each) and to its log stream (ship
that off the host: journald/syslog forwarding). `fleetgate audit verify` checks the chain against the
newest anchor, so records removed from the tail, or rewritten, up to that anchor are found.

The MAC (HMAC-SHA256) uses `DATA/audit.key`: 32 random bytes made at the first start, 0600, not in the
database and not in `fleetgate backup` archives (copy it separately, like the anchors). Not derived from
the CA key, because: the CA keys travel in every backup, next to the database, so a derived key would
let whoever holds a backup forge anchors for it; the CA key may be passphrase-protected or kept
offline, and verifying the audit log must not need it; and one key per purpose means rotating the CA
does not invalidate every anchor. What the MAC gives: an exported anchor (a copy of the file, a log
line) cannot be forged or edited without the key. What it cannot give: someone who can read
`audit.key` on the host can forge anchors there too — the copies kept off the host are what protect
against that attacker.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

KEY_FILE = "audit.key"
ANCHORS_FILE = "audit-anchors.log"
_FORMAT = 1
_TAIL_BYTES = 64 * 1024  # the newest anchor is found in the file's last bytes


class AnchorError(ValueError):
    """An anchor file or line that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    at: str  # ISO-8601 UTC, when it was written
    event: str  # "start", "stop", "periodic"
    mac: str

    def line(self) -> str:
        return json.dumps({"v": _FORMAT, **asdict(self)}, sort_keys=True, separators=(",", ":"))


def _message(seq: int, digest: str, at: str, event: str) -> bytes:
    return f"fleetgate-audit-anchor/v{_FORMAT}\n{seq}\n{digest}\n{at}\n{event}".encode()


def make_anchor(key: bytes, seq: int, digest: str, at: str, event: str) -> Anchor:
    mac = hmac.new(key, _message(seq, digest, at, event), hashlib.sha256).hexdigest()
    return Anchor(seq, digest, at, event, mac)


def mac_valid(key: bytes, anchor: Anchor) -> bool:
    expected = hmac.new(key, _message(anchor.seq, anchor.hash, anchor.at, anchor.event), hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), anchor.mac)


def key_path(root: Path) -> Path:
    return root / KEY_FILE


def anchors_path(root: Path) -> Path:
    return root / ANCHORS_FILE


def load_key(root: Path) -> bytes | None:
    try:
        return key_path(root).read_bytes()
    except FileNotFoundError:
        return None


def load_or_create_key(root: Path) -> bytes:
    """The anchor key, made once (32 random bytes, owner-only)."""
    key = load_key(root)
    if key is not None:
        return key
    key = secrets.token_bytes(32)
    fd = os.open(key_path(root), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
        out.flush()
        os.fsync(out.fileno())
    return key


def append_anchor(root: Path, anchor: Anchor) -> None:
    """Append one line to DATA/audit-anchors.log (created 0600), on disk before this returns."""
    fd = os.open(anchors_path(root), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (anchor.line() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_anchor(text: str, where: str) -> Anchor:
    """One anchor from a line of the anchors file, or from a log line that carries one."""
    start = text.find("{")
    if start < 0:
        raise AnchorError(f"{where} holds no audit anchor")
    try:
        data = json.loads(text[start:])
        anchor = Anchor(
            int(data["seq"]), str(data["hash"]), str(data["at"]), str(data["event"]), str(data["mac"])
        )
    except (ValueError, KeyError, TypeError):
        raise AnchorError(f"{where} is not a valid audit anchor") from None
    if data.get("v") != _FORMAT or anchor.seq < 0:
        raise AnchorError(f"{where} is not a valid audit anchor (format {data.get('v')!r})")
    return anchor


def latest_anchor(path: Path) -> Anchor | None:
    """The newest anchor in a file: the anchors log, or a copy of it or of the gateway's log lines
    (lines without an anchor are skipped). None if it has none. A last line without its newline (a
    write cut short by a crash) does not count."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _TAIL_BYTES))
            tail = handle.read()
    except FileNotFoundError:
        return None
    lines = tail.split(b"\n")[:-1]  # complete lines only
    if size > _TAIL_BYTES and lines:
        lines = lines[1:]  # the first one may be cut
    for raw in reversed(lines):
        if b'"mac"' in raw:
            return parse_anchor(raw.decode("utf-8", "replace"), f"the newest anchor in {path}")
    return None


def check_against(anchor: Anchor, key: bytes, chain_length: int, hash_at: dict[int, str] | None) -> str:
    """What is wrong with an intact chain of `chain_length` records, judged by `anchor` ("" if nothing).

    `hash_at` maps the anchored seq to its record's hash now (empty if the record is gone)."""
    when = f"the anchor written at {anchor.at} ({anchor.event})"
    if not mac_valid(key, anchor):
        return f"{when} does not carry a valid MAC: it was forged or edited, or made with another audit.key"
    if anchor.seq > chain_length:
        removed = (
            f"record {anchor.seq} was"
            if anchor.seq == chain_length + 1
            else f"records {chain_length + 1} to {anchor.seq} were"
        )
        return (
            f"the log ends at record {chain_length} but {when} says record {anchor.seq} existed: "
            f"{removed} removed from its end"
        )
    if (hash_at or {}).get(anchor.seq) != anchor.hash:
        return f"record {anchor.seq} no longer has the hash {when} recorded: the chain was rewritten"
    return ""
