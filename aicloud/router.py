"""``aicloud router``: the platform engineer's side of the model gateway (keys, routes)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aicloud.admin import AdminEndpoint, admin_call
from aicloud.output import Format, emit

app = typer.Typer(help="Operate the inference router: team keys and routes.", no_args_is_help=True)
keys_app = typer.Typer(help="Virtual keys: per team (or user/app), with models, limits, budget.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
ROUTER = AdminEndpoint("inference-router", "AICLOUD_ROUTER_URL", "AICLOUD_ROUTER_ADMIN_TOKEN",
                       "router-admin-token")
Output = Annotated[Format, typer.Option("--output", "-o", help="table or json")]
KEY_COLUMNS = ("key_id", "team", "name", "user", "models", "rpm", "tpm", "max_parallel", "budget_usd")


def _call(method: str, path: str, **kwargs: Any) -> Any:
    return admin_call(ROUTER, method, path, **kwargs)


@keys_app.command("create")
def create_key(
    team: Annotated[str, typer.Option(help="Team the key bills to.")],
    name: Annotated[str, typer.Option(help="What the key is for, e.g. an app name.")] = "default",
    user: Annotated[str | None, typer.Option(help="A person the key belongs to.")] = None,
    model: Annotated[list[str] | None, typer.Option(help="A model alias it may use (repeat); "
                                                         "none: every model of the team.")] = None,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute, across all replicas.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute, across all replicas.")] = None,
    max_parallel: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
    budget_usd: Annotated[str | None, typer.Option(help="Monthly budget of this key in USD.")] = None,
    output: Output = Format.table,
) -> None:
    """Create a key. The key itself is printed once; only its hash is stored."""
    spec = {"team": team, "name": name, "user": user, "models": model or [], "rpm": rpm, "tpm": tpm,
            "max_parallel": max_parallel, "budget_usd": budget_usd}
    created = _call("POST", "/admin/keys", json={k: v for k, v in spec.items() if v is not None})
    emit(created, fmt=output, columns=("key", *KEY_COLUMNS))


@keys_app.command("list")
def list_keys(team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
              output: Output = Format.table) -> None:
    """Active keys (never the keys themselves)."""
    found = _call("GET", "/admin/keys", params={"team": team} if team else None)["keys"]
    emit(found, fmt=output, columns=KEY_COLUMNS)


@keys_app.command("revoke")
def revoke_key(key_id: str, output: Output = Format.table) -> None:
    """Revoke a key; every replica refuses it within the key cache TTL (5 s by default)."""
    emit(_call("DELETE", f"/admin/keys/{key_id}"), fmt=output, columns=("revoked",))


@app.command("routes")
def routes(output: Output = Format.table) -> None:
    """Model aliases, their targets and weights, and the state of each target's circuit."""
    found = _call("GET", "/admin/routes")
    if output is Format.json:
        emit(found, fmt=output, columns=())
        return
    rows = [{"model": alias, "kind": r["kind"],
             "targets": [f"{t['provider']}/{t['model']} ({t['weight']})" for t in r["targets"]],
             "fallbacks": r["fallbacks"], "pii": r["pii"], "teams": r["teams"] or "all",
             "admin": alias in found["overrides"]} for alias, r in sorted(found["models"].items())]
    emit(rows, fmt=output, columns=("model", "kind", "targets", "fallbacks", "pii", "teams", "admin"))
    for target, state in sorted(found["circuits"].items()):
        if state != "closed":
            typer.echo(f"circuit {target}: {state}")
