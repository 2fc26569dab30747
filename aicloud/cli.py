"""The ``aicloud`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicloud import agents, backup, bill, cluster, demo, dev, endpoints, jobs, policy, router, sandboxes, slo
from aicloud.output import console, fail

app = typer.Typer(
    help="aicloud: run jobs, notebooks, endpoints and agents on your company's AI platform.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
app.add_typer(jobs.create_app, name="create")
app.add_typer(jobs.jobs_app, name="jobs")
app.add_typer(jobs.models_app, name="models")
app.add_typer(policy.policy_app, name="policy")
app.add_typer(policy.catalog_app, name="catalog")
app.add_typer(router.app, name="router")
app.add_typer(sandboxes.app, name="sandboxes")
app.add_typer(agents.app, name="agents")
app.add_typer(endpoints.deploy_app, name="deploy")
app.add_typer(endpoints.endpoints_app, name="endpoints")
app.add_typer(endpoints.notebooks_app, name="notebooks")
app.add_typer(slo.app, name="slo")
app.add_typer(backup.app, name="admin")
app.command("bill")(bill.bill)
app.command("cluster")(cluster.cluster)
app.add_typer(bill.budgets_app, name="budgets")
app.command("demo")(demo.demo)
contracts_app = typer.Typer(help="The event contracts (AsyncAPI + JSON Schema).", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")


@contracts_app.command("export")
def contracts_export(directory: Annotated[Path, typer.Argument(help="Where to write.")]) -> None:
    """Write the AsyncAPI document and one JSON Schema per event."""
    from contracts.export import export

    written = export(directory)
    console.print(f"wrote {len(written)} files to {directory}")


@contracts_app.command("check")
def contracts_check(directory: Annotated[Path, typer.Argument()] = Path("docs/contracts")) -> None:
    """Fail when the exported files differ from the code."""
    from contracts.export import drift

    problems = drift(directory)
    if problems:
        for problem in problems:
            console.print(f"  {problem}")
        raise fail("contracts drifted from the code",
                   hint=f"run `aicloud contracts export {directory}` and commit the result")
    console.print("contracts are in sync")


def main() -> None:
    app()
