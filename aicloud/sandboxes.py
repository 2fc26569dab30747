"""``aicloud sandboxes``: isolated places to run untrusted code (for agents' tools, or by hand)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from aicloud.client import ApiError
from aicloud.jobs import Output, Team
from aicloud.output import Format, console, emit, errors, fail
from aicloud.sandboxes_client import SandboxClient

app = typer.Typer(help="Sandboxes: create one from a template, run commands in it, move files, "
                       "delete it. Each has no network, a TTL and hard limits.", no_args_is_help=True)
COLUMNS = ("sandbox_id", "template", "isolation", "pooled", "created_at", "expires_at")
T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except ApiError as exc:
        raise fail(str(exc), hint=exc.hint, code=exc.exit_code) from None


def _with_client(team: str | None, fn: Callable[[SandboxClient], T]) -> T:
    with _errors():
        client = SandboxClient(team=team)
        try:
            return fn(client)
        finally:
            client.close()


@app.command("templates")
def templates(team: Team = None, output: Output = Format.table) -> None:
    """What a sandbox can start from: packages, limits, lifetimes, warm pool."""
    found = _with_client(team, lambda c: c.templates())
    rows = [{**t, "packages": [f"{k}=={v}" for k, v in t["packages"].items()],
             "limits": ", ".join(f"{k}={v}" for k, v in t["limits"].items())} for t in found]
    emit(found if output is Format.json else rows, fmt=output,
         columns=("name", "available", "packages", "limits", "ttl_s", "pool_ready", "error"))


@app.command("create")
def create(
    template: Annotated[str, typer.Option(help="See `aicloud sandboxes templates`.")] = "python",
    ttl: Annotated[int | None, typer.Option("--ttl", help="Seconds until it is deleted.")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(
        help="A host it may reach through the egress proxy (repeat; *.example.com works).")] = None,
    team: Team = None, output: Output = Format.table,
) -> None:
    """Create a sandbox and print its id."""
    box = _with_client(team, lambda c: c.create(template, ttl_s=ttl, allow_hosts=allow_host or []))
    emit(box.info, fmt=output, columns=COLUMNS)


@app.command("list")
def list_(team: Team = None, output: Output = Format.table) -> None:
    """Your team's running sandboxes."""
    emit(_with_client(team, lambda c: c.list()), fmt=output, columns=COLUMNS,
         empty="No sandboxes. Create one: aicloud sandboxes create --template python")


@app.command("get")
def get(sandbox_id: str, team: Team = None, output: Output = Format.table) -> None:
    emit(_with_client(team, lambda c: c.get(sandbox_id).info), fmt=output,
         columns=(*COLUMNS, "deadline", "allow_hosts", "limits"))


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(
    ctx: typer.Context, sandbox_id: str,
    code: Annotated[str | None, typer.Option(help="Source for the template's interpreter, "
                                                  "instead of a command after --.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds before the command is killed.")] = None,
    team: Team = None, output: Output = Format.table,
) -> None:
    """Run `-- COMMAND ARGS...` (or --code) in a sandbox; output streams as it comes, and the
    exit code is the command's. A limit that ended it (timeout, memory, pids, ...) is named."""
    command = list(ctx.args) or None
    if (command is None) == (code is None):
        raise fail("give a command after -- or --code, not both and not neither",
                   hint="aicloud sandboxes exec SB -- python3 -c 'print(1)'", code=2)
    live = output is Format.table

    def run(client: SandboxClient) -> Any:
        box = client.get(sandbox_id)
        return box.exec(command, code=code, timeout_s=timeout,
                        on_stdout=_writer(sys.stdout) if live else None,
                        on_stderr=_writer(sys.stderr) if live else None)

    result = _with_client(team, run)
    if not live:
        emit(result.__dict__, fmt=output, columns=())
    elif result.limit:
        errors.print(f"[yellow]ended by the sandbox's {result.limit} limit[/]")
    elif result.error:
        errors.print(f"[red]{result.error}[/]")
    raise typer.Exit(result.exit_code if 0 <= result.exit_code < 256 else 128 + abs(result.exit_code))


@app.command("files")
def files(
    sandbox_id: str,
    path: Annotated[str, typer.Argument(help="A path in the workspace.")] = ".",
    put: Annotated[Path | None, typer.Option(help="Upload this local file to PATH.")] = None,
    get: Annotated[Path | None, typer.Option(help="Download PATH to this local file ('-': stdout).")] = None,
    team: Team = None, output: Output = Format.table,
) -> None:
    """List a folder of the workspace, or upload (--put) / download (--get) a file."""
    if put is not None and not put.is_file():
        raise fail(f"{put} is not a file", code=2)

    def run(client: SandboxClient) -> Any:
        box = client.get(sandbox_id)
        if put is not None:
            return box.write(path, put.read_bytes())
        if get is not None:
            return box.read(path)
        return box.files(path)

    found = _with_client(team, run)
    if isinstance(found, bytes):
        assert get is not None
        if str(get) == "-":
            sys.stdout.buffer.write(found)
        else:
            get.write_bytes(found)
            console.print(f"wrote {len(found)} bytes to {get}")
    elif isinstance(found, dict):
        emit(found, fmt=output, columns=("path", "size"))
    else:
        emit(found, fmt=output, columns=("name", "dir", "size"))


@app.command("egress")
def egress(sandbox_id: str, team: Team = None, output: Output = Format.table) -> None:
    """The sandbox's allowlist and every outbound connection it asked for, allowed or denied."""
    found = _with_client(team, lambda c: c.request("GET", f"/v1/sandboxes/{sandbox_id}/egress").json())
    if output is Format.json:
        emit(found, fmt=output, columns=())
        return
    console.print(f"allowed hosts: {', '.join(found['allow_hosts']) or 'none (no network at all)'}")
    emit(found["connections"], fmt=output, columns=("host", "port", "allowed", "reason"))


@app.command("delete")
def delete(sandbox_id: str, team: Team = None) -> None:
    """Delete a sandbox now (everything in it is gone)."""
    _with_client(team, lambda c: c.get(sandbox_id).delete())
    console.print(f"deleted {sandbox_id}")


def _writer(stream: Any) -> Callable[[str], None]:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write
