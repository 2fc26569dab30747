"""``aicloud deploy model``, ``aicloud endpoints ...``, ``aicloud create notebook`` and
``aicloud notebooks ...``: the long-lived workloads, with their history as progress lines."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from aicloud.client import PlatformClient
from aicloud.durations import parse_duration
from aicloud.jobs import Output, Team, _call, _client, create_app
from aicloud.output import Format, console, emit, errors, fail

deploy_app = typer.Typer(help="Deploy models as endpoints.", no_args_is_help=True)
endpoints_app = typer.Typer(help="Model endpoints: list, inspect, roll back, delete.", no_args_is_help=True)
notebooks_app = typer.Typer(help="Notebooks: list, inspect, stop, extend.", no_args_is_help=True)
ENDPOINT_COLUMNS = (
    "name",
    "status",
    "model",
    "version",
    "canary_version",
    "canary_percent",
    "kind",
    "reason",
)
NOTEBOOK_COLUMNS = ("notebook_id", "status", "url", "stops_at", "reason")


@deploy_app.command("model")
def deploy_model(
    name: Annotated[str, typer.Option(help="Endpoint name; the router serves it under this model name.")],
    model: Annotated[str | None, typer.Option("--model", help="Registry model (default: --name).")] = None,
    version: Annotated[
        str, typer.Option(help="Registry version, `latest` or an alias (@production).")
    ] = "latest",
    hf_model: Annotated[str | None, typer.Option(help="Hugging Face id, resolved offline.")] = None,
    endpoint_type: Annotated[str, typer.Option(help="real-time")] = "real-time",
    scale_to_zero: Annotated[bool, typer.Option(help="Stop every replica when idle.")] = True,
    min_replicas: Annotated[int, typer.Option(min=0)] = 0,
    max_replicas: Annotated[int, typer.Option(min=1)] = 1,
    canary: Annotated[
        int, typer.Option(help="Give the new version this % of traffic (1-50) until judged.")
    ] = 0,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs per replica.")] = 0,
    idle_timeout: Annotated[int | None, typer.Option(help="Seconds idle before scaling to zero.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute per team.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute per team.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until it serves (or fails), showing progress.")] = True,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")] = 300,
    team: Team = None,
    output: Output = Format.table,
) -> None:
    """Deploy a registry model version or a Hugging Face model:
    `aicloud deploy model --name legal-answerer --version 5 --scale-to-zero [--canary 10]`."""
    body = {
        "name": name,
        "model": None if hf_model else (model or name),
        "version": version,
        "hf_model": hf_model,
        "endpoint_type": endpoint_type,
        "scale_to_zero": scale_to_zero,
        "min_replicas": min_replicas,
        "max_replicas": max_replicas,
        "canary": canary,
        "gpus": gpus,
        "idle_timeout_s": idle_timeout,
        "rpm_limit": rpm,
        "tpm_limit": tpm,
    }
    client = _client(team)
    started = _call(client, "POST", "/v1/endpoints", json=body)
    if output is Format.table:
        console.print(
            f"endpoint [bold]{name}[/] requested for team {started['team']} [dim](trace {client.trace_id})[/]"
        )
    endpoint = started
    if wait:
        endpoint = follow_endpoint(
            client,
            name,
            since=len(started["history"]) - 1,
            timeout=timeout,
            quiet=output is Format.json,
            canary=bool(canary),
        )
    emit(endpoint, fmt=output, columns=ENDPOINT_COLUMNS)
    if wait and endpoint["status"] in ("failed", "rejected"):
        raise typer.Exit(1)


def follow_endpoint(
    client: PlatformClient, name: str, *, since: int, timeout: float, quiet: bool, canary: bool = False
) -> dict[str, Any]:
    """Print the endpoint's new history lines until it serves the new version, or fails."""
    deadline, seen = time.monotonic() + timeout, since
    while True:
        endpoint = _call(client, "GET", f"/v1/endpoints/{name}")
        history = endpoint["history"]
        for entry in history[seen:]:
            if not quiet:
                errors.print(f"  {entry['at'][11:23]}  {entry['event']:<16} {entry['detail']}")
        seen = len(history)
        latest = {e["event"] for e in history[since:]}
        if endpoint["status"] in ("failed", "rejected") or {"rejected", "failed"} & latest:
            return dict(endpoint)
        if "ready" in latest and (not canary or endpoint["canary_version"] or "canary rolled back" in latest):
            return dict(endpoint)
        if time.monotonic() > deadline:
            raise fail(
                f"endpoint {name} is not serving after {timeout:.0f} s (status {endpoint['status']})",
                hint=f"follow it with `aicloud endpoints get {name}`",
                code=1,
            )
        time.sleep(0.3)


@endpoints_app.command("list")
def list_endpoints(team: Team = None, output: Output = Format.table) -> None:
    """Your team's endpoints."""
    emit(_call(_client(team), "GET", "/v1/endpoints"), fmt=output, columns=ENDPOINT_COLUMNS,
         empty="No endpoints yet. Serve a model: aicloud deploy model --name MODEL --version N")


@endpoints_app.command("get")
def get_endpoint(name: str, team: Team = None, output: Output = Format.table) -> None:
    """One endpoint: versions, canary, scan decision and its history."""
    endpoint = _call(_client(team), "GET", f"/v1/endpoints/{name}")
    emit(endpoint, fmt=output, columns=ENDPOINT_COLUMNS)
    if output is Format.table:
        scan = endpoint.get("scan") or {}
        if scan:
            console.print(
                f"scan: {'allowed' if scan.get('allowed') else 'REFUSED'} - {scan.get('format')}, "
                f"{scan.get('size_bytes', 0):,} bytes, licence {scan.get('license') or 'unknown'}"
                + "".join(f"\n  finding: {f}" for f in scan.get("findings", []))
            )
        for entry in endpoint["history"][-15:]:
            console.print(f"  {entry['at'][:23]}  {entry['event']:<16} {entry['detail']}", highlight=False)


@endpoints_app.command("rollback")
def rollback_endpoint(
    name: str,
    team: Team = None,
    output: Output = Format.table,
    timeout: Annotated[float, typer.Option()] = 120,
) -> None:
    """Drop the running canary, or go back to the previous version; waits until it took effect."""
    client = _client(team)
    before = _call(client, "POST", f"/v1/endpoints/{name}/rollback")
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        endpoint = _call(client, "GET", f"/v1/endpoints/{name}")
        done = (
            "canary rolled back" in {e["event"] for e in endpoint["history"][len(before["history"]) :]}
            if before["canary_version"]
            else endpoint["version"] != before["version"]
        )
        if done:
            if output is Format.table:
                console.print(
                    f"rolled back in {time.monotonic() - started:.2f} s: {name} serves version "
                    f"{endpoint['version']}"
                )
            emit(endpoint, fmt=output, columns=ENDPOINT_COLUMNS)
            return
        time.sleep(0.1)
    raise fail(
        f"rollback of {name} did not take effect in {timeout:.0f} s",
        code=1,
        hint=f"see `aicloud endpoints get {name}`",
    )


@endpoints_app.command("delete")
def delete_endpoint(name: str, team: Team = None, output: Output = Format.table) -> None:
    """Stop every replica and remove the endpoint's routes."""
    endpoint = _call(_client(team), "DELETE", f"/v1/endpoints/{name}")
    if output is Format.table:
        console.print(f"endpoint {name} is being deleted")
    else:
        emit(endpoint, fmt=output, columns=ENDPOINT_COLUMNS)


@create_app.command("notebook")
def create_notebook(
    team: Team = None,
    name: Annotated[str | None, typer.Option(help="Notebook id (generated when omitted).")] = None,
    gpus: Annotated[int, typer.Option(min=0)] = 0,
    idle_timeout: Annotated[str | None, typer.Option(help="e.g. 30m, 1h or seconds.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait until it opens.")] = True,
    timeout: Annotated[float, typer.Option()] = 180,
    output: Output = Format.table,
) -> None:
    """A Jupyter notebook in a sandbox with no network, stopped when idle:
    `aicloud create notebook --team legal --idle-timeout 1h`."""
    client = _client(team)
    body = {
        "name": name,
        "gpus": gpus,
        "idle_timeout_s": parse_duration(idle_timeout, option="--idle-timeout") if idle_timeout else None,
    }
    notebook = _call(client, "POST", "/v1/notebooks", json=body)
    deadline = time.monotonic() + timeout
    while wait and notebook["status"] not in ("running", "stopped", "rejected"):
        if time.monotonic() > deadline:
            raise fail(f"notebook {notebook['notebook_id']} did not open in {timeout:.0f} s", code=1)
        time.sleep(0.5)
        notebook = _call(client, "GET", f"/v1/notebooks/{notebook['notebook_id']}")
    emit(notebook, fmt=output, columns=NOTEBOOK_COLUMNS)
    if notebook["status"] == "rejected":
        raise typer.Exit(1)
    if output is Format.table and notebook["status"] == "running":
        console.print(
            f"open {notebook['url']}?key=<your team key> (the key is set as a cookie, then "
            "dropped from the URL)",
            highlight=False,
        )


@notebooks_app.command("list")
def list_notebooks(team: Team = None, output: Output = Format.table) -> None:
    emit(_call(_client(team), "GET", "/v1/notebooks"), fmt=output, columns=NOTEBOOK_COLUMNS,
         empty="No notebooks. Open one: aicloud create notebook")


@notebooks_app.command("get")
def get_notebook(notebook_id: str, team: Team = None, output: Output = Format.table) -> None:
    notebook = _call(_client(team), "GET", f"/v1/notebooks/{notebook_id}")
    emit(notebook, fmt=output, columns=NOTEBOOK_COLUMNS)
    if output is Format.table:
        for entry in notebook["history"][-10:]:
            console.print(f"  {entry['at'][:23]}  {entry['event']:<10} {entry['detail']}", highlight=False)


@notebooks_app.command("stop")
def stop_notebook(
    notebook_id: str,
    team: Team = None,
    wait: Annotated[bool, typer.Option(help="Wait until its files are saved and it stopped.")] = True,
    timeout: Annotated[float, typer.Option()] = 120,
    output: Output = Format.table,
) -> None:
    """Save the notebooks to the team's volume and stop the server."""
    client = _client(team)
    notebook = _call(client, "POST", f"/v1/notebooks/{notebook_id}/stop")
    deadline = time.monotonic() + timeout
    while wait and notebook["status"] != "stopped":
        if time.monotonic() > deadline:
            raise fail(f"notebook {notebook_id} has not stopped after {timeout:.0f} s", code=1,
                       hint=f"see `aicloud notebooks get {notebook_id}`")
        time.sleep(0.3)
        notebook = _call(client, "GET", f"/v1/notebooks/{notebook_id}")
    emit(notebook, fmt=output, columns=NOTEBOOK_COLUMNS)
    if output is Format.table and notebook["status"] == "stopped":
        saved = ", ".join(notebook.get("saved") or []) or "nothing to save"
        console.print(f"saved to the team's volume: {saved}", highlight=False)


@notebooks_app.command("extend")
def extend_notebook(
    notebook_id: str,
    by: Annotated[str, typer.Option(help="e.g. 1h (at most 4h)")] = "1h",
    team: Team = None,
    output: Output = Format.table,
) -> None:
    """Push the notebook's hard cap out, once."""
    extra_s = parse_duration(by, option="--by")
    emit(
        _call(_client(team), "POST", f"/v1/notebooks/{notebook_id}/extend", json={"extra_s": extra_s}),
        fmt=output,
        columns=NOTEBOOK_COLUMNS,
    )
