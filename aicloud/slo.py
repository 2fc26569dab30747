"""``aicloud slo``: SLOs as code (``policies/slos.yaml``) and the Prometheus rules made from them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import httpx
import typer

from aicloud.local.stack import Stack, default_home
from aicloud.output import Format, console, emit, fail
from guardrails import POLICY_DIR

app = typer.Typer(help="Service level objectives: burn-rate rules from policies/slos.yaml, and their status.",
                  no_args_is_help=True)


@app.command("rules")
def rules(
    slos: Annotated[Path, typer.Option(help="The SLO file.")] = POLICY_DIR / "slos.yaml",
    out: Annotated[Path | None, typer.Option(help="Write the rules here; default: print them.")] = None,
    runbook_base: Annotated[str | None, typer.Option(
        envvar="AICLOUD_SLO_RUNBOOK_BASE",
        help="Where runbook_url points, e.g. https://git.example.com/aicloud/-/blob/main/"
             "docs/runbooks/slos.md; default: the repository path.")] = None,
) -> None:
    """Prometheus recording rules and multi-window burn-rate alerts. Exit code 2 on a bad file."""
    from guardrails.slo import (
        RUNBOOK_BASE,
        SloFileError,
        build_rules,
        load_slos,
        render,
        write_rules,
    )

    try:
        found = load_slos(slos)
    except SloFileError as exc:
        raise fail(str(exc), hint="fix the SLO file; nothing was written", code=2) from None
    document = build_rules(found, runbook_base=runbook_base or RUNBOOK_BASE)
    if out is None:
        typer.echo(render(document), nl=False)
        return
    write_rules(document, out)
    count = sum(len(group["rules"]) for group in document["groups"])
    console.print(f"wrote {count} rules for {len(found)} SLOs to {out}")


@app.command("status")
def status(
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.table,
) -> None:
    """Each SLO: its SLI over its window, the error budget left, burn rates over 1 h and 6 h,
    and the alerts firing for it (from the observability-collector, which reads Prometheus).
    Exit code 1 when the collector cannot be reached."""
    url = collector_url()
    try:
        found = httpx.get(f"{url}/v1/slo/status", timeout=15).raise_for_status().json()
    except httpx.HTTPError as exc:
        raise fail(f"cannot read SLO status from the observability-collector at {url}: {exc}",
                   hint="`aicloud dev status` shows whether it runs") from None
    if output is Format.json:
        emit(found, fmt=Format.json, columns=())
        return
    rows = [{"slo": r["slo"], "service": r["service"], "objective": _pct(r["objective"]),
             "sli": _pct(r["sli"]), "budget left": _pct(r["error_budget_left"]),
             "burn 1h": _times(r["burn_rate_1h"]), "burn 6h": _times(r["burn_rate_6h"]),
             "firing": ", ".join(f"{a['alert']} ({a['labels'].get('severity', '?')})"
                                 for a in r["alerts"]) or "-"} for r in found["slos"]]
    emit(rows, fmt=Format.table, columns=("slo", "service", "objective", "sli", "budget left",
                                          "burn 1h", "burn 6h", "firing"))
    prometheus, slo_file = found["prometheus"], found["slo_file"]
    if not prometheus["reachable"]:
        console.print(f"[yellow]no figures:[/] {prometheus['error']}")
    if slo_file["error"]:
        console.print(f"[red]the SLO file was refused[/] (the last good SLOs are shown): {slo_file['error']}")
    for alert in found["alerts"]:
        console.print(f"[red]firing[/] {alert['alert']} {alert['summary']}\n"
                      f"  runbook: {alert['runbook_url']}")


def collector_url() -> str:
    """``AICLOUD_COLLECTOR_URL``, else the local stack's observability-collector."""
    url = os.environ.get("AICLOUD_COLLECTOR_URL") or next(
        (str(e["url"]) for e in Stack(default_home()).read_state()
         if e.get("name") == "observability-collector"), None)
    if url is None:
        raise fail("no observability-collector configured",
                   hint="start the local stack (`aicloud dev up --detach`) or set AICLOUD_COLLECTOR_URL")
    return url.rstrip("/")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.3f}%".replace(".000%", "%")


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"
