"""``aicloud bill`` (a team's spend) and ``aicloud budgets`` (the platform engineer's side)."""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from typing import Annotated, Any

import typer

from aicloud.admin import AdminEndpoint, admin_call
from aicloud.jobs import Team, _call, _client
from aicloud.output import Format, console, emit, fail

budgets_app = typer.Typer(help="Monthly budgets per team: alerts, and what happens at 100 %.",
                          no_args_is_help=True)
LEDGER = AdminEndpoint("cost-ledger", "AICLOUD_LEDGER_URL", "AICLOUD_LEDGER_ADMIN_TOKEN",
                       "ledger-admin-token")
DIMENSIONS = ("project", "user_id", "kind", "model", "gpu_type", "resource_id")


def bill(
    team: Team = None,
    by: Annotated[list[str] | None, typer.Option(
        help=f"Break down by ({', '.join(DIMENSIONS)}); repeatable.")] = None,
    start: Annotated[str | None, typer.Option(
        "--from", help="Start date (ISO), default: month start.")] = None,
    end: Annotated[str | None, typer.Option(
        "--to", help="End date (ISO, exclusive), default: month end.")] = None,
    step: Annotated[str | None, typer.Option(help="Also per hour, day, week or month.")] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, json or csv")] = "table",
) -> None:
    """What your team spent: exact amounts from the ledger, broken down as you ask."""
    bad = next((f"--by {d}" for d in by or [] if d not in DIMENSIONS), None) \
        or (f"-o {output}" if output not in ("table", "json", "csv") else None) \
        or (f"--step {step}" if step not in (None, "hour", "day", "week", "month") else None)
    if bad:
        raise fail(f"{bad} is not one of the choices", hint="see aicloud bill --help", code=2)
    params: list[tuple[str, str]] = [("by", d) for d in by or []]
    params += [(k, v) for k, v in (("from", start), ("to", end), ("step", step)) if v]
    found = _call(_client(team), "GET", "/v1/bill", params=params)
    columns = [*(by or []), *(["bucket"] if step else []), "usd"]
    rows = [{**r, "usd": Decimal(r["usd"])} for r in found["rows"]]
    if output == "json":
        emit(found, fmt=Format.json, columns=())
    elif output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        emit([{**r, "usd": f"${r['usd']:,.2f}"} for r in rows], fmt=Format.table, columns=columns,
             empty="No spend in this period.")
        console.print(f"team {found['team']}, {found['from'][:10]} to {found['to'][:10]}: "
                      f"[bold]${Decimal(found['total_usd']):,.2f}[/]")
        if found["flagged"]:
            console.print(f"[yellow]{len(found['flagged'])} line(s) flagged[/] (unknown GPU type, "
                          "model or team: charged a fallback rate); -o json lists them")


@budgets_app.command("set")
def set_budget(
    team: Annotated[str, typer.Option(help="The team.")],
    amount: Annotated[str, typer.Option(help="Monthly amount in USD, e.g. 500.")],
    action: Annotated[str, typer.Option(
        help="At 100 %: notify, block (refuse new work) or stop.")] = "notify",
    threshold: Annotated[list[int] | None, typer.Option(help="Alert at this percent (repeatable; "
                                                           "default 50, 80, 100).")] = None,
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.table,
) -> None:
    """Set a team's monthly budget. A raise that covers the spend lifts a block at once."""
    body: dict[str, Any] = {"amount_usd": amount, "action": action}
    if threshold:
        body["thresholds"] = threshold
    emit(admin_call(LEDGER, "PUT", f"/v1/budgets/{team}", json=body), fmt=output,
         columns=("team", "budget_id", "amount_usd", "thresholds", "action"))


@budgets_app.command("list")
def list_budgets(
    output: Annotated[Format, typer.Option("--output", "-o", help="table or json")] = Format.table,
) -> None:
    """Every team's budget."""
    emit(admin_call(LEDGER, "GET", "/v1/budgets"), fmt=output,
         columns=("team", "budget_id", "amount_usd", "thresholds", "action"),
         empty="No budgets set. Set one: aicloud budgets set --team TEAM --amount USD")
