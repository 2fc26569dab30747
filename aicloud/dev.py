"""``aicloud dev``: the whole platform on this machine."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.markup import escape

from aicloud.local.components import ENGINES, NATS_CLUSTER_SIZES
from aicloud.local.servers import MissingBinary
from aicloud.local.stack import Stack, default_home
from aicloud.local.supervisor import StackError
from aicloud.output import Format, console, emit, fail

app = typer.Typer(help="Run the whole platform locally: NATS, PostgreSQL, Temporal, 7 services.",
                  no_args_is_help=True)
Home = Annotated[Path | None, typer.Option(help="State directory (default $AICLOUD_HOME or ./.aicloud).")]
COLUMNS = ("name", "pid", "url", "address", "healthy")


@app.command()
def up(
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return once all are ready.")] = False,
    free_ports: Annotated[bool, typer.Option(help="Pick free ports (run stacks side by side).")] = False,
    engine: Annotated[str, typer.Option(help="Where jobs run: local (sandboxed processes on this "
                                        "machine) or ray (also starts a Ray cluster: a head and "
                                        "two worker nodes with simulated GPUs).")] = "local",
    nats_cluster: Annotated[int, typer.Option(
        help="NATS servers: 1, or 3 for the bus as production runs it (a cluster, each stream "
             "replicated on all three: one server's loss loses no event).")] = 1,
    home: Home = None,
) -> None:
    """Start everything, wait until each component is ready, print where to find it."""
    if engine not in ENGINES:
        raise fail(f"unknown engine {engine!r}", hint=f"choose one of: {', '.join(ENGINES)}")
    if nats_cluster not in NATS_CLUSTER_SIZES:
        raise fail(f"--nats-cluster {nats_cluster} is not offered",
                   hint="use 1, or 3 (a cluster needs an odd size to keep a majority)")
    stack = Stack(home or default_home())
    started = time.monotonic()
    console.print(f"[bold]aicloud[/] starting in {stack.home}")
    try:
        with console.status("starting...") as status:
            def report(line: str) -> None:
                status.update(line)
                console.print(f"  [green]✓[/] {line}")

            def warn(line: str) -> None:
                console.print(f"  [yellow]![/] {line}")

            stack.up(free_ports=free_ports, report=report, engine=engine, nats_nodes=nats_cluster,
                     warn=warn)
    except (StackError, MissingBinary, subprocess.CalledProcessError) as exc:
        raise fail(f"the platform did not start: {exc}",
                   hint="`aicloud dev logs NAME` shows a component's whole log") from None
    console.print(f"all ready in {time.monotonic() - started:.1f}s\n")
    emit(stack.status(), fmt=Format.table, columns=COLUMNS)
    _print_links(stack)
    if detach:
        console.print("\nrunning in the background; stop with [bold]aicloud dev down[/]")
        return
    console.print("\n[dim]Ctrl-C stops everything[/]")
    _wait_for_interrupt(stack)


@app.command()
def status(
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.table,
    as_json: Annotated[bool, typer.Option("--json", help="Same as -o json.")] = False,
    home: Home = None,
) -> None:
    """Each component: name, pid, url, address (Temporal's frontend for `temporal --address` and
    SDK clients), healthy. Exit code 1 when something is unhealthy."""
    rows = Stack(home or default_home()).status()
    emit(rows, fmt=Format.json if as_json else output, columns=COLUMNS)
    down = [str(row["name"]) for row in rows if not row["healthy"]]
    if down and not as_json and output is Format.table:
        for name in down:
            console.print(f"[red]{escape(name)}[/] is not healthy: {OUTAGES}#{outage_anchor(name)}",
                          highlight=False)
    if not rows or down:
        raise typer.Exit(1)


OUTAGES = "docs/runbooks/outages.md"


def outage_anchor(name: str) -> str:
    """The section of the outage runbook for a component (nats-2 is nats's)."""
    if name.startswith("nats"):
        return "nats"
    return "prometheus-alertmanager" if name in ("prometheus", "alertmanager") else name


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Component name, e.g. quota or temporal.")],
    lines: Annotated[int, typer.Option("--lines", "-n", min=1)] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    home: Home = None,
) -> None:
    """Show (or follow) one component's log."""
    stack = Stack(home or default_home())
    log = stack.home / "logs" / f"{name}.log"
    if not log.exists():
        known = sorted(p.stem for p in (stack.home / "logs").glob("*.log"))
        raise fail(f"no log for {name!r}", hint=f"components: {', '.join(known) or 'none yet'}")
    argv = ["tail", "-n", str(lines), *(["-F"] if follow else []), str(log)]
    raise typer.Exit(subprocess.call(argv))


@app.command()
def restart(
    name: Annotated[str, typer.Argument(help="Component name, e.g. provisioner.")],
    home: Home = None,
) -> None:
    """Restart one component (stopped if it still runs), keeping the others running."""
    stack = Stack(home or default_home())
    try:
        stack.restart(name, report=lambda line: console.print(f"  [green]✓[/] {line}"))
    except StackError as exc:
        raise fail(str(exc), hint="`aicloud dev status` lists the components") from None


@app.command()
def preempt(
    job_id: Annotated[str, typer.Argument(help="The running job to preempt.")],
    reason: Annotated[str, typer.Option(help="Why, as the job's log and the workflow show it.")] = (
        "spot capacity reclaimed (simulated)"),
    home: Home = None,
) -> None:
    """Simulate a spot interruption: the job is stopped (SIGTERM, grace, kill) and runs again,
    resuming from its last checkpoint; the fourth preemption ends it (reason: preempted)."""
    stack = Stack(home or default_home())
    if not stack.read_state() or "provisioner" in stack.exited():
        raise fail("the local stack's provisioner is not running", hint="start it with `aicloud dev up`")
    port = stack.ports(free=False)["provisioner"]
    try:
        response = httpx.post(f"http://127.0.0.1:{port}/internal/jobs/{job_id}/preempt",
                              json={"reason": reason}, timeout=10)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach the provisioner on port {port}: {exc}",
                   hint="`aicloud dev status` shows whether it is healthy") from None
    if response.status_code == 404:
        raise fail(f"no running job {job_id!r}", hint="`aicloud jobs list` shows your jobs", code=1)
    if response.status_code >= 400:
        raise fail(f"the provisioner refused: {response.text}", code=1)
    console.print(f"  [yellow]preempted[/] {job_id} ({reason}): it resumes from its checkpoint")


@app.command()
def down(home: Home = None) -> None:
    """Stop every component of this home; no process is left behind."""
    stack = Stack(home or default_home())
    stopped = stack.down(report=lambda line: console.print(f"  {line}"))
    console.print(f"stopped {len(stopped)} component(s)" if stopped else "nothing was running")


def _print_links(stack: Stack) -> None:
    rows = stack.status()
    urls = {row["name"]: row["url"] for row in rows}
    temporal = next((row["address"] for row in rows if row["name"] == "temporal"), None)
    console.print(f"\n  Temporal UI     {urls.get('temporal')}")
    console.print(f"  Temporal        {temporal}  (temporal --address, SDK clients)")
    console.print(f"  platform API    {urls.get('catalog')}/docs")
    nats = next((row for row in rows if row["name"] == "nats"), {})
    if "password_file" in nats:
        console.print(f"  NATS            {urls.get('nats')}  (user {nats['user']}, password in "
                      f"{nats['password_file']}; each service has its own user)")
    console.print(f"  model router    {urls.get('inference-router')}/v1  (team keys in "
                  f"{stack.home / 'router-keys.json'})")
    console.print(f"  bill dashboard  {urls.get('cost-ledger')}/bill")
    console.print(f"  metrics         {urls.get('observability-collector')}/metrics")
    console.print(f"  observability   {urls.get('observability-collector')}/observability  (models, "
                  "GPUs, drift, SLOs, alerts)")
    if "prometheus" in urls:
        console.print(f"  Prometheus      {urls['prometheus']}/alerts  (SLO burn-rate rules)")
    if "alertmanager" in urls:
        console.print(f"  Alertmanager    {urls['alertmanager']}  (pages reach the bus: aicloud.alerts.>)")


def _wait_for_interrupt(stack: Stack) -> None:
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reported: set[str] = set()
    while not stopping:
        time.sleep(1)
        for name in stack.exited() - reported:
            console.print(f"[red]{name} exited[/]; `aicloud dev logs {name}` shows why")
            reported.add(name)
    console.print("\nstopping...")
    stack.down(report=lambda line: console.print(f"  {line}"))
