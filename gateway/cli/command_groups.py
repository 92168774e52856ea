"""How the CLI's commands are laid out: noun then verb, help grouped by workflow, old spellings kept.

`fleetgate unit quarantine TRK-1`, `fleetgate operator list`, `fleetgate session kick ID`: a noun
(what you act on), then a verb. `SectionedGroup` prints the top-level help in sections that follow an
operator's day (set up, register and enroll, operate, ...) instead of click's alphabetical list, and
`OrderedGroup` lists a noun's verbs in the order they are used (add before remove).

Spellings from before this grammar (`fleetgate quarantine X`, `fleetgate revoke unit/X`) still work
for one release as `deprecated_alias`es: the same command under its old name, listed in a section of
its own and printing one line on stderr that names the new spelling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

# Short help is a command's first sentence, never cut: click's default cuts it to the terminal width
# ("Make a key on this device, enroll it over EST with a..."), which hides what the command does.
_WHOLE_SENTENCE = 1000


def _rows(group: click.Group, ctx: click.Context, names: list[str]) -> list[tuple[str, str]]:
    rows = []
    for name in names:
        command = group.get_command(ctx, name)
        if command is not None and not command.hidden:
            rows.append((name, command.get_short_help_str(_WHOLE_SENTENCE)))
    return rows


class OrderedGroup(click.Group):
    """A group whose commands are listed in the order they were added (the order of the workflow)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = _rows(self, ctx, self.list_commands(ctx))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class PipeClosed(Exception):
    """The reader of stdout went away (`fleetgate unit list | head -1`)."""


class SectionedGroup(OrderedGroup):
    """The top-level group: commands in named sections; anything not placed lands in "Other commands",
    so a command registered later is never missing from the help."""

    def __init__(self, *args: Any, sections: tuple[tuple[str, tuple[str, ...]], ...] = (), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sections = sections

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # Raised as another exception on purpose: click turns a broken pipe into exit status 1,
            # while a reader closing the pipe early is no failure of ours (the entry point exits 0).
            raise PipeClosed from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        placed: set[str] = set()
        for title, names in self.sections:
            present = [name for name in names if name in self.commands]
            placed.update(present)
            rows = _rows(self, ctx, present)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [name for name in self.list_commands(ctx) if name not in placed]
        rows = _rows(self, ctx, rest)
        if rows:
            with formatter.section("Other commands"):
                formatter.write_dl(rows)


def deprecation_note(old: str, new: str) -> None:
    click.echo(
        f"fleetgate: `fleetgate {old}` is deprecated and goes away in the next release; "
        f"use `fleetgate {new}`",
        err=True,
    )


def deprecated_alias(command: click.Command, old: str, new: str) -> click.Command:
    """`command` under its old top-level name `old`, noting on stderr that `new` is the spelling now.

    The alias shares the command's parameters and callback, so both spellings behave the same."""
    callback = command.callback
    assert callback is not None

    def run(*args: Any, **kwargs: Any) -> Any:
        deprecation_note(old, new)
        return callback(*args, **kwargs)

    return _copy(command, old, run, f"Deprecated: use `fleetgate {new}`.")


def _copy(command: click.Command, name: str, callback: Callable[..., Any], short: str) -> click.Command:
    return click.Command(
        name,
        params=list(command.params),
        callback=callback,
        help=f"{short}\n\n{command.help or ''}",
        short_help=short,
        epilog=command.epilog,
        context_settings=command.context_settings,
    )
