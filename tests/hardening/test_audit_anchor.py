"""The audit log checked against anchors kept outside its database (the review's tail truncation).

Someone who can write `fleetgate.db` drops the triggers, deletes the newest records and moves the
head row back to the last record kept: no hash needs recomputing, and the chain alone verifies. The
anchors the gateway exports (DATA/audit-anchors.log, the log stream) at start, stop and every
`storage.audit_anchor_interval` seconds remember the head, under a MAC.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hardening.common import record_figure
from tests.harness import GatewayProcess, run_cli
from tests.ops.helpers import eventually

REMOVED = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A data dir a gateway served (and anchored) and then stopped cleanly."""
    root = tmp_path_factory.mktemp("anchor")
    config = root / "gateway.yaml"
    config.write_text("storage:\n  audit_anchor_interval: 1\n")
    gw = GatewayProcess(root, extra_args=("--config", str(config)))
    gw.init()
    gw.start()
    for i in range(3):
        gw.enroll_unit(f"TRK-ANCHOR-{i}")
    anchors = gw.data / "audit-anchors.log"
    assert eventually(lambda: '"periodic"' in anchors.read_text(), 10), "no periodic anchor was written"
    gw.stop()
    yield gw


def _copy(gw: GatewayProcess, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(gw.data, data)
    return data


def _truncate(data: Path, count: int) -> tuple[int, int]:
    """The review's reproduction: drop the triggers, delete the newest records, move the head back."""
    db = sqlite3.connect(data / "fleetgate.db")
    (head,) = db.execute("SELECT seq FROM audit_head").fetchone()
    keep = head - count
    db.executescript("DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_head_forward_only;")
    db.execute("DELETE FROM audit_log WHERE seq > ?", (keep,))
    db.execute(
        "UPDATE audit_head SET seq=?, hash=(SELECT hash FROM audit_log WHERE seq=?) WHERE id=1", (keep, keep)
    )
    db.executescript(
        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
        "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;"
        "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head WHEN NEW.seq <= OLD.seq "
        "BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END;"
    )
    db.commit()
    db.close()
    return head, keep


def _verify(data: Path, *extra: str) -> tuple[int, str]:
    result = run_cli("audit", "verify", *extra, data=data)
    return result.code, (result.stdout + result.stderr).strip()


def test_an_intact_log_matches_its_newest_anchor(served: GatewayProcess, tmp_path: Path) -> None:
    data = _copy(served, tmp_path)
    code, said = _verify(data)
    assert code == 0, said
    assert "matches the anchor of" in said and "(stop," in said
    last = json.loads((data / "audit-anchors.log").read_text().splitlines()[-1])
    assert last["event"] == "stop" and (data / "audit.key").stat().st_mode & 0o777 == 0o600
    assert "audit anchor {" in served.log()  # exported to the log stream too


def test_tail_truncation_is_named(served: GatewayProcess, tmp_path: Path) -> None:
    data = _copy(served, tmp_path)
    head, keep = _truncate(data, REMOVED)
    code, said = _verify(data)
    record_figure("audit_tail_truncation", head=head, kept=keep, verify_exit=code, verify_said=said)
    assert code == 1, f"a truncated log verified: {said}"
    assert f"the log ends at record {keep}" in said and f"records {keep + 1} to {head} were removed" in said


def test_removing_the_anchor_log_too_is_noticed_and_an_exported_copy_still_names_the_truncation(
    served: GatewayProcess, tmp_path: Path
) -> None:
    data = _copy(served, tmp_path)
    exported = tmp_path / "anchors-kept-elsewhere.log"
    shutil.copy(data / "audit-anchors.log", exported)
    head, keep = _truncate(data, REMOVED)
    (data / "audit-anchors.log").unlink()
    code, said = _verify(data)
    assert code == 1 and "audit-anchors.log is missing or holds no anchor" in said, said
    code, said = _verify(data, "--anchor", str(exported))
    assert code == 1 and f"records {keep + 1} to {head} were removed" in said, said


def test_a_forged_anchor_does_not_carry_a_valid_mac(served: GatewayProcess, tmp_path: Path) -> None:
    data = _copy(served, tmp_path)
    _, keep = _truncate(data, REMOVED)
    anchors = data / "audit-anchors.log"
    db = sqlite3.connect(data / "fleetgate.db")
    (digest,) = db.execute("SELECT hash FROM audit_log WHERE seq = ?", (keep,)).fetchone()
    db.close()
    last = json.loads(anchors.read_text().splitlines()[-1])
    forged = {**last, "seq": keep, "hash": digest}  # made to match the truncated chain, without the key
    with anchors.open("a") as out:
        out.write(json.dumps(forged) + "\n")
    code, said = _verify(data)
    assert code == 1 and "does not carry a valid MAC" in said, said
