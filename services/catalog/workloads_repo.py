"""Endpoints and notebooks as the platform API shows them: one row each, kept current from
their events, with a short history a person can read (what happened, when, and why).

The workflows own the truth; these rows are the read model behind ``aicloud endpoints`` and
``aicloud notebooks`` (and the name-ownership check: an endpoint name belongs to one team
until it is deleted). ``WorkloadStore`` is what the handlers need of it; ``SqlWorkloads`` is
that store on one transaction.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from contracts import Envelope
from services.catalog import registry
from services.catalog.domain import Change
from services.catalog.registry import ModelPublic
from services.kit.outbox import Outbox

MIGRATION_STATEMENTS = (
    """CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        version TEXT,
        canary_version TEXT,
        canary_percent INT NOT NULL DEFAULT 0,
        kind TEXT NOT NULL DEFAULT '',
        url TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        scan JSONB NOT NULL DEFAULT '{}'::jsonb,
        request JSONB NOT NULL,
        history JSONB NOT NULL DEFAULT '[]'::jsonb,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE notebooks (
        notebook_id TEXT PRIMARY KEY,
        team TEXT NOT NULL,
        status TEXT NOT NULL,
        url TEXT NOT NULL DEFAULT '',
        stops_at TIMESTAMPTZ,
        extended BOOLEAN NOT NULL DEFAULT false,
        reason TEXT NOT NULL DEFAULT '',
        saved JSONB NOT NULL DEFAULT '[]'::jsonb,
        request JSONB NOT NULL,
        history JSONB NOT NULL DEFAULT '[]'::jsonb,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
)
HISTORY_KEPT = 50
JSONB_FIELDS = frozenset({"scan", "saved"})


class EndpointPublic(SQLModel):
    name: str
    team: str
    status: str
    model: str
    version: str | None = None
    canary_version: str | None = None
    canary_percent: int = 0
    kind: str = ""
    reason: str = ""
    scan: dict[str, Any] = Field(default_factory=dict)
    request: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class NotebookPublic(SQLModel):
    notebook_id: str
    team: str
    status: str
    url: str = ""
    stops_at: datetime | None = None
    extended: bool = False
    reason: str = ""
    saved: list[str] = Field(default_factory=list)
    request: dict[str, Any] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class WorkloadStore(Protocol):
    """The endpoints and notebooks read model, the team's registry and the outbox, all in the
    caller's one transaction."""

    async def get_endpoint(self, *, name: str) -> EndpointPublic | None: ...
    async def list_endpoints(self, *, team: str) -> list[EndpointPublic]: ...
    async def request_endpoint(self, *, name: str, team: str, model: str, request: dict[str, Any],
                               note: str) -> None: ...
    async def change_endpoint(self, *, name: str, change: Change) -> None: ...
    async def get_notebook(self, *, notebook_id: str) -> NotebookPublic | None: ...
    async def list_notebooks(self, *, team: str) -> list[NotebookPublic]: ...
    async def insert_notebook(self, *, notebook_id: str, team: str, request: dict[str, Any]) -> bool: ...
    async def change_notebook(self, *, notebook_id: str, change: Change) -> None: ...
    async def mark_extended(self, *, notebook_id: str, extra_s: int) -> None: ...
    async def get_model(self, *, team: str, name: str) -> ModelPublic | None: ...
    async def stage(self, event: Envelope) -> None: ...


class SqlWorkloads:
    """``WorkloadStore`` in Postgres, on one session; ``stage`` adds to its outbox."""

    def __init__(self, session: AsyncSession, outbox: Outbox) -> None:
        self.session, self.outbox = session, outbox

    async def get_endpoint(self, *, name: str) -> EndpointPublic | None:
        row = await self._one("SELECT * FROM endpoints WHERE name = :k", name)
        return EndpointPublic.model_validate(row) if row else None

    async def list_endpoints(self, *, team: str) -> list[EndpointPublic]:
        rows = await self._all("SELECT * FROM endpoints WHERE team = :t AND status <> 'deleted'"
                               " ORDER BY name", team)
        return [EndpointPublic.model_validate(row) for row in rows]

    async def request_endpoint(self, *, name: str, team: str, model: str, request: dict[str, Any],
                               note: str) -> None:
        """A (re)deploy: a deleted or failed endpoint starts over; a live one keeps serving."""
        await self.session.execute(text(_REQUEST_ENDPOINT), {
            "n": name, "t": team, "m": model, "r": json.dumps(request),
            "h": json.dumps([_entry("requested", note)])})

    async def change_endpoint(self, *, name: str, change: Change) -> None:
        await self._change("endpoints", "name", name, change)

    async def get_notebook(self, *, notebook_id: str) -> NotebookPublic | None:
        row = await self._one("SELECT * FROM notebooks WHERE notebook_id = :k", notebook_id)
        return NotebookPublic.model_validate(row) if row else None

    async def list_notebooks(self, *, team: str) -> list[NotebookPublic]:
        rows = await self._all("SELECT * FROM notebooks WHERE team = :t"
                               " ORDER BY created_at DESC LIMIT 100", team)
        return [NotebookPublic.model_validate(row) for row in rows]

    async def insert_notebook(self, *, notebook_id: str, team: str, request: dict[str, Any]) -> bool:
        result = await self.session.execute(text(
            "INSERT INTO notebooks (notebook_id, team, status, request, history)"
            " VALUES (:n, :t, 'requested', CAST(:r AS JSONB), CAST(:h AS JSONB)) ON CONFLICT DO NOTHING"
        ), {"n": notebook_id, "t": team, "r": json.dumps(request),
            "h": json.dumps([_entry("requested", "waiting for quota")])})
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def change_notebook(self, *, notebook_id: str, change: Change) -> None:
        await self._change("notebooks", "notebook_id", notebook_id, change)

    async def mark_extended(self, *, notebook_id: str, extra_s: int) -> None:
        """Push the hard cap out by ``extra_s``; a notebook is extended once."""
        change = Change("extended", f"hard cap extended by {extra_s} s", {"extended": True})
        await self._change("notebooks", "notebook_id", notebook_id, change,
                           extra_sql=", stops_at = stops_at + make_interval(secs => :x)",
                           params={"x": extra_s})

    async def get_model(self, *, team: str, name: str) -> ModelPublic | None:
        return await registry.get_model(self.session, team=team, name=name)

    async def stage(self, event: Envelope) -> None:
        await self.outbox.add(self.session, event)

    async def _one(self, sql: str, key: str) -> dict[str, Any] | None:
        row = (await self.session.execute(text(sql), {"k": key})).mappings().first()
        return dict(row) if row else None

    async def _all(self, sql: str, team: str) -> list[dict[str, Any]]:
        return [dict(row) for row in (await self.session.execute(text(sql), {"t": team})).mappings()]

    async def _change(self, table: str, key: str, value: str, change: Change, *, extra_sql: str = "",
                      params: dict[str, Any] | None = None) -> None:
        """Set the change's columns, append its history line and keep the last
        ``HISTORY_KEPT`` lines."""
        sets = ", ".join(f"{f} = CAST(:f_{f} AS JSONB)" if f in JSONB_FIELDS else f"{f} = :f_{f}"
                         for f in change.fields)
        values = {f"f_{f}": json.dumps(v) if f in JSONB_FIELDS else v for f, v in change.fields.items()}
        await self.session.execute(text(
            f"UPDATE {table} SET {sets + ', ' if sets else ''}"
            f" history = history || CAST(:h AS JSONB), updated_at = now(){extra_sql}"
            f" WHERE {key} = :k"
        ), {"k": value, "h": json.dumps([_entry(change.what, change.note)]), **values, **(params or {})})
        await self.session.execute(text(
            f"UPDATE {table} SET history = (SELECT coalesce(jsonb_agg(e ORDER BY i), '[]'::jsonb) FROM"
            f" (SELECT e, i FROM jsonb_array_elements(history) WITH ORDINALITY AS t(e, i)"
            f"  ORDER BY i DESC LIMIT {HISTORY_KEPT}) s)"
            f" WHERE {key} = :k AND jsonb_array_length(history) > {HISTORY_KEPT}"
        ), {"k": value})


_REQUEST_ENDPOINT = (
    "INSERT INTO endpoints (name, team, status, model, request, history)"
    " VALUES (:n, :t, 'requested', :m, CAST(:r AS JSONB), CAST(:h AS JSONB))"
    " ON CONFLICT (name) DO UPDATE SET team = :t, model = :m, request = CAST(:r AS JSONB),"
    " status = CASE WHEN endpoints.status IN ('deleted', 'failed', 'rejected') THEN 'requested'"
    "               ELSE endpoints.status END,"
    " version = CASE WHEN endpoints.status IN ('deleted', 'failed', 'rejected') THEN NULL"
    "                ELSE endpoints.version END,"
    " history = (endpoints.history || CAST(:h AS JSONB)), updated_at = now()"
)


def _entry(what: str, note: str) -> dict[str, str]:
    return {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": what, "detail": note}
