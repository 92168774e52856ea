"""How the gateway's log looks: the classic text line, or one JSON object per line (`--log-format
json`) with stable keys for a log shipper or a SIEM: `ts` (UTC, ISO 8601), `level`, `logger`, `msg`,
and, for security events mirrored from the audit log (logger `fleetgate.audit`), `audit` holding the
record as `fleetgate events --json` shows it. Strings are JSON-escaped, so no logged value (a client
id, a user name) can start a line of its own; in the text format control characters are escaped.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gateway.render.safe_text import printable

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NODE: list[str] = []  # a cluster node's name (set once by the runtime); a single node has none


def set_node(name: str) -> None:
    """Name this node in every log line from now on: `[name]` before the logger (text), `node` (JSON)."""
    _NODE[:] = [name]


class SafeFormatter(logging.Formatter):
    """Log lines stay one line each whatever a client sent: control characters in the message (a
    client id, a path, a topic quoted in it) are escaped. A traceback, added after the message, is
    left as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        line = super().formatMessage(record)
        if _NODE:
            line = line.replace(f" {record.name}: ", f" [{printable(_NODE[0])}] {record.name}: ", 1)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if _NODE:
            entry["node"] = _NODE[0]
        audit = getattr(record, "audit", None)
        if audit is not None:
            entry["audit"] = audit
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, sort_keys=True, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Send the gateway's log to stderr at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else SafeFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
