"""``aicloud admin``: the platform as a whole; backing the local stack up and restoring it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import nats.errors
import typer
from rich.markup import escape

from aicloud.local.archive import ArchiveError
from aicloud.local.backup import BackupError, HomeNotEmpty, backup, restore
from aicloud.local.jetstream_backup import SnapshotError
from aicloud.local.servers import MissingBinary
from aicloud.local.stack import Stack, default_home
from aicloud.local.supervisor import StackError
from aicloud.output import Format, emit, errors, fail

app = typer.Typer(help="Operate the platform as a whole: back it up, restore it.", no_args_is_help=True)
Home = Annotated[Path | None, typer.Option(help="State directory (default $AICLOUD_HOME or ./.aicloud).")]
Output = Annotated[Format, typer.Option("--output", "-o", help="table or json")]
FAILURES = (BackupError, ArchiveError, SnapshotError, StackError, MissingBinary, nats.errors.Error,
            subprocess.CalledProcessError, OSError)


def progress(line: str) -> None:
    """Progress goes to stderr: stdout is the summary (``-o json`` stays parseable)."""
    errors.print(f"  [green]✓[/] {escape(line)}", highlight=False)


@app.command("backup")
def backup_command(
    to: Annotated[Path, typer.Option("--to", help="The archive to write (tar.gz; holds secrets: "
                                     "it is made readable by you only).")],
    output: Output = Format.table,
    home: Home = None,
) -> None:
    """One archive of the running local stack: every service's PostgreSQL schema, every
    JetStream stream with its consumers, Temporal's database, the home's job folders,
    artifacts and keys, and the policies; a manifest lists each part with its sha256."""
    try:
        summary = backup(Stack(home or default_home()), to, report=progress)
    except FAILURES as exc:
        raise fail(f"the backup did not finish: {exc}",
                   hint="nothing was written to the target; `aicloud dev status` shows the stack") from None
    emit(summary, fmt=output, columns=("file", "bytes", "streams", "messages", "parts", "took_s"))


@app.command("restore")
def restore_command(
    source: Annotated[Path, typer.Option("--from", help="An archive from `aicloud admin backup`.")],
    free_ports: Annotated[bool, typer.Option(help="Pick free ports (run stacks side by side).")] = False,
    output: Output = Format.table,
    home: Home = None,
) -> None:
    """Bring the platform back from an archive into an empty home: start the infrastructure,
    restore PostgreSQL, the streams and Temporal's database, then start the services."""
    target = home or default_home()
    try:
        summary = restore(source, target, free_ports=free_ports, report=progress)
    except HomeNotEmpty as exc:
        raise fail(str(exc)) from None
    except FAILURES as exc:
        left = target.exists() and any(target.iterdir())
        hint = f"everything it started is stopped; remove {target} before trying again" if left else ""
        raise fail(f"the restore did not finish: {exc}", hint=hint) from None
    emit(summary, fmt=output, columns=("home", "backup_created_at", "streams", "components", "took_s"))
