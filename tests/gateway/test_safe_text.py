"""What strangers' text looks like on an operator's terminal, in tables and in the audit log."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from gateway.admin.api import same_origin
from gateway.render.safe_text import cell, printable
from gateway.stores.audit_log import MAX_DETAIL, MAX_FIELD, AuditLog, bounded
from pki.sqlite import open_database


def test_control_and_formatting_characters_are_escaped_on_one_line() -> None:
    assert printable("a\nb\r\tc") == "a\\nb\\r\\tc"
    assert printable("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert printable("\x00\x7f\x9b") == "\\x00\\x7f\\x9b"  # NUL, DEL, the one-byte CSI
    assert printable("abc\u202edcba\u200b") == "abc\\u202edcba\\u200b"  # bidi override, zero width
    assert (
        printable("TRK-00042 fleet/TRK-1/telemetry/gps ünïcødé")
        == "TRK-00042 fleet/TRK-1/telemetry/gps ünïcødé"
    )
    assert printable("x" * 10, limit=5) == "xxxx…"


def test_a_cell_is_never_read_as_rich_markup() -> None:
    out = io.StringIO()
    table = Table()
    table.add_column("subject")
    table.add_row(cell("[red]RED[/red] [link=http://x]y[/link]\x1b[2J"))
    Console(file=out, force_terminal=True, width=200).print(table)
    text = out.getvalue()
    assert "[red]RED[/red]" in text and "[link=http://x]" in text and "\\x1b[2J" in text
    assert "\x1b[2J" not in text and "\x1b[31m" not in text


def test_recorded_text_is_cut_to_size_with_a_hash_of_the_whole(tmp_path: Path) -> None:
    assert bounded("short", MAX_FIELD) == "short"
    long = "A" * 5500
    cut = bounded(long, MAX_FIELD)
    assert len(cut) <= MAX_FIELD and cut.startswith("A" * 80) and "+5412 chars, sha256 " in cut
    assert bounded(long, MAX_FIELD) == cut and bounded(long + "B", MAX_FIELD) != cut  # same value, same text
    conn = open_database(tmp_path / "audit.db")
    log = AuditLog(conn)
    record = log.append(
        actor="address/10.0.0.1",
        action="admin.request",
        subject="GET /api/units/" + "B" * 6000,
        outcome="refused",
        reason="no_client_certificate",
        details={"client_id": "X" * 60000, "nested": {"topic": "t/" * 5000}},
        now=datetime.now(UTC),
    )
    assert len(record.subject) <= MAX_FIELD
    assert len(str(record.details["client_id"])) <= MAX_DETAIL
    assert log.verify().ok and log.appended == 1 and 0 < log.appended_bytes < 2000


def test_same_origin_is_this_gateway_over_https() -> None:
    assert same_origin("https://gateway.example:8443", "gateway.example:8443")
    assert same_origin("https://Gateway.Example", "gateway.example:443")
    assert not same_origin("https://evil.example", "gateway.example:8443")
    assert not same_origin("http://gateway.example:8443", "gateway.example:8443")
    assert not same_origin("null", "gateway.example:8443")
    assert not same_origin("https://gateway.example:8443.evil.example", "gateway.example:8443")
