"""``aicloud cluster``: where jobs run — the engine's nodes and its GPUs by type."""

from __future__ import annotations

from typing import Annotated

import typer

from aicloud.client import ApiError, PlatformClient
from aicloud.output import Format, console, emit, fail

Team = Annotated[str | None, typer.Option(envvar="AICLOUD_TEAM", help="Your team ($AICLOUD_TEAM).")]
Output = Annotated[Format, typer.Option("--output", "-o", help="table or json")]


def cluster(team: Team = None, output: Output = Format.table) -> None:
    """Nodes (state, GPU type, GPUs in use) and GPUs by type: total, in use, free. Logical GPUs
    with no device behind them (the local Ray cluster's) are marked simulated."""
    try:
        view = PlatformClient(team=team).request("GET", "/v1/cluster")
    except ApiError as exc:
        raise fail(str(exc), hint=exc.hint or "is the platform up? `aicloud dev status`",
                   code=exc.exit_code) from None
    if output is Format.json:
        emit(view, fmt=output, columns=())
        return
    console.print(f"engine [bold]{view['engine']}[/] {view.get('address') or ''}")
    if view.get("note"):
        console.print(f"[dim]{view['note']}[/]")
    if view.get("gpus"):
        emit(view["gpus"], fmt=output, columns=("gpu_type", "total", "in_use", "free"))
    if view.get("nodes"):
        rows = [{**node, "gpus": f"{node['gpus_in_use']}/{node['gpus']} in use" if node["gpus"] else "",
                 "gpu_type": (node.get("gpu_type") or "") + (" (simulated)" if node["simulated"] else "")}
                for node in view["nodes"]]
        emit(rows, fmt=output, columns=("node_id", "state", "gpu_type", "gpus"))
