"""docs/operations.md's command reference is the CLI's own help, current: regenerate it with
scripts/cli-reference after changing a command, an option or a help text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from gateway.cli import cli
from gateway.cli.reference import BEGIN, END, render

ROOT = Path(__file__).resolve().parents[2]
RUNBOOK = ROOT / "docs" / "operations.md"


def test_the_runbooks_command_reference_is_what_the_cli_says_now(tmp_path: Path) -> None:
    # Rendered in a fresh process, as scripts/cli-reference does: click caches each command's help
    # option the first time it is built, so a test that ran `policy` on its own earlier in this
    # worker would make it print `--help` where the CLI prints `-h, --help`.
    document = RUNBOOK.read_text(encoding="utf-8")
    assert document.count(BEGIN) == 1 and document.count(END) == 1
    copy = tmp_path / "operations.md"
    copy.write_text(document, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.reference", str(copy)], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert copy.read_text(encoding="utf-8") == document, (
        "run scripts/cli-reference and commit docs/operations.md"
    )


def test_every_command_has_its_page() -> None:
    text = render(cli)

    def paths(command: click.Command, path: str) -> list[str]:
        found = [path]
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                if not sub.hidden:
                    found += paths(sub, f"{path} {name}")
        return found

    for path in paths(cli, "fleetgate"):
        assert f"### `{path}`\n\n```\nUsage: {path} " in text, path


def test_the_script_rewrites_only_between_the_markers(tmp_path: Path) -> None:
    document = tmp_path / "ops.md"
    document.write_text(f"# Runbook\n\nby hand\n\n{BEGIN}\nstale\n{END}\n\nafter\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.reference", str(document)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    text = document.read_text(encoding="utf-8")
    assert text.startswith("# Runbook\n\nby hand\n\n" + BEGIN) and text.endswith(END + "\n\nafter\n")
    assert "stale" not in text and "### `fleetgate unit add`" in text
