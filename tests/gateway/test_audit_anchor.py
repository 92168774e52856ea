"""Audit anchors as values and files: the MAC, the newest anchor in a file, and what a check says."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.stores.audit_anchor import (
    AnchorError,
    append_anchor,
    check_against,
    latest_anchor,
    load_or_create_key,
    mac_valid,
    make_anchor,
)

KEY = b"k" * 32


def test_the_mac_covers_every_field() -> None:
    anchor = make_anchor(KEY, 7, "ab" * 32, "2026-01-01T00:00:00Z", "stop")
    assert mac_valid(KEY, anchor)
    assert not mac_valid(b"x" * 32, anchor)
    for field, value in (("seq", 6), ("hash", "cd" * 32), ("at", "2026-01-02T00:00:00Z"), ("event", "start")):
        assert not mac_valid(KEY, anchor.__class__(**{**anchor.__dict__, field: value}))


def test_the_newest_complete_anchor_is_read_from_the_file_or_a_copy_of_log_lines(tmp_path: Path) -> None:
    assert latest_anchor(tmp_path / "missing.log") is None
    first = make_anchor(KEY, 1, "a" * 64, "2026-01-01T00:00:00Z", "start")
    second = make_anchor(KEY, 9, "b" * 64, "2026-01-01T00:01:00Z", "periodic")
    append_anchor(tmp_path, first)
    append_anchor(tmp_path, second)
    path = tmp_path / "audit-anchors.log"
    assert path.stat().st_mode & 0o777 == 0o600
    with path.open("a") as out:
        out.write('{"v":1,"seq":99')  # a write cut short by a crash: not an anchor
    assert latest_anchor(path) == second
    log = tmp_path / "gateway.log"
    log.write_text(
        f"2026-01-01 INFO fleetgate: audit anchor {first.line()}\n2026-01-01 INFO fleetgate: other\n"
    )
    assert latest_anchor(log) == first
    log.write_text('{"v":1,"mac":"x"}\n')
    with pytest.raises(AnchorError, match="not a valid audit anchor"):
        latest_anchor(log)


def test_what_a_check_against_an_anchor_says() -> None:
    anchor = make_anchor(KEY, 10, "h10", "2026-01-01T00:00:00Z", "stop")
    assert check_against(anchor, KEY, 12, {10: "h10"}) == ""
    assert "records 8 to 10 were removed" in check_against(anchor, KEY, 7, {})
    assert "record 10 was removed" in check_against(anchor, KEY, 9, {})
    assert "the chain was rewritten" in check_against(anchor, KEY, 12, {10: "other"})
    assert "valid MAC" in check_against(anchor, b"y" * 32, 12, {10: "h10"})


def test_the_key_is_made_once_owner_only(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert len(key) == 32 and load_or_create_key(tmp_path) == key
    assert (tmp_path / "audit.key").stat().st_mode & 0o777 == 0o600
