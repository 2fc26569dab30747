"""``aicloud slo``: SLOs as code (``policies/slos.yaml``) and the Prometheus rules made from them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aicloud.output import console, fail
from guardrails import POLICY_DIR

app = typer.Typer(help="Service level objectives: burn-rate rules from policies/slos.yaml.",
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
