"""Text that strangers chose, made safe to show on an operator's terminal or in a log line.

Audit records, topics, client ids and request paths can hold whatever a client sent: a newline that
starts a forged line in `fleetgate events`, an ANSI escape that recolours or erases the live feed,
rich markup that a table would interpret, a bidi override that shows text in another order. Every
human-readable output passes such text through `printable`: C0 controls (newline and tab included),
DEL, C1 controls and the bidi/zero-width formatting characters become visible escapes (`\\x1b`,
`\\n`, `\\u202e`). A backslash stays as it is: text that merely looks like an escape controls
nothing. For rich output, `cell` also makes the value a `Text`, which rich never parses for markup.

JSON output needs none of this (json.dumps escapes control characters itself).
"""

from __future__ import annotations

import re

from rich.text import Text

# C0 controls, DEL, C1 controls; then bidi embeddings/overrides/isolates, the marks, zero-width
# characters, the line and paragraph separators, and the BOM.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, limit: int | None = None) -> str:
    """`text` with every control and formatting character escaped, on one line.

    With `limit`, longer results are cut to `limit` characters ending in "…"."""
    value = text if isinstance(text, str) else str(text)
    if _UNSAFE.search(value) is not None:
        value = _UNSAFE.sub(_escape, value)
    if limit is not None and len(value) > limit:
        value = value[: max(0, limit - 1)] + "…"
    return value


def cell(text: object, style: str = "") -> Text:
    """A rich table cell showing `text` literally: escaped, never read as markup."""
    return Text(printable(text), style=style)
