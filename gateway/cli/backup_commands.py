"""`fleetgate backup DEST` and `fleetgate restore SRC` (see gateway/stores/backup.py for what they hold)."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.cli.common import CliError, data_option, emit_json, friendly_errors, json_option, utc_now
from gateway.stores.backup import BackupError, create_backup, restore_backup
from gateway.stores.datadir import DataDir


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@data_option
@json_option
@friendly_errors
def backup(dest: Path, data_dir: Path | None, as_json: bool) -> None:
    """Snapshot the data dir into DEST (a new directory, or a file ending in .tar.gz), safe while serving.

    The backup holds the CA's private keys: keep it as carefully as the data dir itself.
    """
    try:
        summary = create_backup(DataDir.resolve(data_dir), dest.absolute(), utc_now())
    except BackupError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        emit_json(summary.as_dict())
        return
    click.echo(
        f"Backed up {summary.files} files ({summary.bytes} bytes, {summary.identities} identities, "
        f"audit head {summary.audit_head}) to {summary.path}."
    )
    click.echo(f"Restore with: fleetgate restore {summary.path} --data NEW_DIR")


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@data_option
@click.option(
    "--force", is_flag=True, help="Replace a non-empty data dir (its contents are moved aside, not deleted)."
)
@json_option
@friendly_errors
def restore(src: Path, data_dir: Path | None, force: bool, as_json: bool) -> None:
    """Verify every checksum in backup SRC, then restore it as the data dir (never under a live gateway)."""
    try:
        result = restore_backup(src.absolute(), DataDir.resolve(data_dir), force, utc_now())
    except BackupError as exc:
        raise CliError(str(exc)) from None
    # The gateway admits only certificates its registry recorded: anything issued after the backup is
    # unknown to the restored one and is refused until it is issued again.
    reissue = (
        f"certificates issued after {result['created_at']} are unknown to the restored registry and are "
        "refused: issue them again (`fleetgate operator|service|partner add NAME`, and "
        "`fleetgate unit token UNIT` or `fleetgate unit add UNIT` for units)"
    )
    if as_json:
        emit_json({**result, "warning": reissue})
        return
    click.echo(
        f"Restored {result['files']} verified files from {result['from']} (taken {result['created_at']}) "
        f"into {result['restored']}."
    )
    click.echo(f"Note: {reissue}.")
    if result["moved_aside"]:
        click.echo(f"The previous contents are in {result['moved_aside']}.")
