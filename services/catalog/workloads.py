"""Endpoints and notebooks as the platform API shows them: one row each, kept current from
their events, with a short history a person can read (what happened, when, and why).

The workflows own the truth; these rows are the read model behind ``aicloud endpoints`` and
``aicloud notebooks`` (and the name-ownership check: an endpoint name belongs to one team
until it is deleted).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from contracts import (
    EndpointAdmitted,
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointFailed,
    EndpointReady,
    EndpointRejected,
    EndpointRetired,
    EndpointScaledToZero,
    EndpointScanned,
    NotebookAdmitted,
    NotebookRejected,
    NotebookStarted,
    NotebookStopped,
)
from services.kit.inbox import UnitOfWork

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


async def get_endpoint(session: AsyncSession, name: str) -> EndpointPublic | None:
    row = (
        (await session.execute(text("SELECT * FROM endpoints WHERE name = :n"), {"n": name}))
        .mappings()
        .first()
    )
    return EndpointPublic.model_validate(dict(row)) if row else None


async def list_endpoints(session: AsyncSession, team: str) -> list[EndpointPublic]:
    rows = (
        (
            await session.execute(
                text("SELECT * FROM endpoints WHERE team = :t AND status <> 'deleted' ORDER BY name"),
                {"t": team},
            )
        )
        .mappings()
        .all()
    )
    return [EndpointPublic.model_validate(dict(r)) for r in rows]


async def upsert_endpoint_request(
    session: AsyncSession, *, name: str, team: str, model: str, request: dict[str, Any], note: str
) -> None:
    """A (re)deploy: a deleted or failed endpoint starts over; a live one keeps serving."""
    await session.execute(
        text(
            "INSERT INTO endpoints (name, team, status, model, request, history)"
            " VALUES (:n, :t, 'requested', :m, CAST(:r AS JSONB), CAST(:h AS JSONB))"
            " ON CONFLICT (name) DO UPDATE SET team = :t, model = :m, request = CAST(:r AS JSONB),"
            " status = CASE WHEN endpoints.status IN ('deleted', 'failed', 'rejected') THEN 'requested'"
            "               ELSE endpoints.status END,"
            " version = CASE WHEN endpoints.status IN ('deleted', 'failed', 'rejected') THEN NULL"
            "                ELSE endpoints.version END,"
            " history = (endpoints.history || CAST(:h AS JSONB)), updated_at = now()"
        ),
        {
            "n": name,
            "t": team,
            "m": model,
            "r": json.dumps(request),
            "h": json.dumps([_entry("requested", note)]),
        },
    )


async def get_notebook(session: AsyncSession, notebook_id: str) -> NotebookPublic | None:
    row = (
        (await session.execute(text("SELECT * FROM notebooks WHERE notebook_id = :n"), {"n": notebook_id}))
        .mappings()
        .first()
    )
    return NotebookPublic.model_validate(dict(row)) if row else None


async def list_notebooks(session: AsyncSession, team: str) -> list[NotebookPublic]:
    rows = (
        (
            await session.execute(
                text("SELECT * FROM notebooks WHERE team = :t ORDER BY created_at DESC LIMIT 100"),
                {"t": team},
            )
        )
        .mappings()
        .all()
    )
    return [NotebookPublic.model_validate(dict(r)) for r in rows]


async def insert_notebook(
    session: AsyncSession, *, notebook_id: str, team: str, request: dict[str, Any]
) -> bool:
    result = await session.execute(
        text(
            "INSERT INTO notebooks (notebook_id, team, status, request, history)"
            " VALUES (:n, :t, 'requested', CAST(:r AS JSONB), CAST(:h AS JSONB)) ON CONFLICT DO NOTHING"
        ),
        {
            "n": notebook_id,
            "t": team,
            "r": json.dumps(request),
            "h": json.dumps([_entry("requested", "waiting for quota")]),
        },
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def mark_extended(session: AsyncSession, notebook_id: str, extra_s: int) -> None:
    await _update(
        session,
        "notebooks",
        "notebook_id",
        notebook_id,
        "extended",
        f"hard cap extended by {extra_s} s",
        {"extended": True},
        extra_sql=", stops_at = stops_at + make_interval(secs => :x)",
        params={"x": extra_s},
    )


# -- event handlers ----------------------------------------------------------------------------
async def on_endpoint_event(event: Any, uow: UnitOfWork) -> None:
    session, name = uow.session, event.endpoint
    current = await get_endpoint(session, name)
    if current is None:
        return  # published by someone else (straight onto NATS): nothing to show yet
    fields: dict[str, Any] = {}
    match event:
        case EndpointAdmitted():
            what, note = "admitted", event.reason
        case EndpointRejected():
            what, note = "rejected", event.reason
            fields = {"reason": event.reason} | ({} if current.version else {"status": "rejected"})
        case EndpointScanned():
            verdict = "allowed" if event.allowed else "refused"
            what, note = (
                f"scan {verdict}",
                (
                    f"{event.format}, {event.size_bytes:,} bytes, licence "
                    f"{event.license or 'unknown'}" + (f"; {event.reason}" if event.reason else "")
                ),
            )
            fields = {
                "scan": json.dumps(
                    event.model_dump(
                        mode="json",
                        include={
                            "version",
                            "allowed",
                            "format",
                            "size_bytes",
                            "license",
                            "findings",
                            "reason",
                        },
                    )
                )
            }
            fields |= {} if current.version else {"status": "provisioning" if event.allowed else "scanning"}
        case EndpointReady():
            what, note = (
                "ready",
                f"version {event.version} at {event.weight}% on {len(event.replicas)} replica(s)",
            )
            sole = current.version in (None, event.version) and not current.canary_version
            if event.weight == 100 or sole:
                fields = {
                    "version": event.version,
                    "kind": event.kind,
                    "status": "ready",
                    "canary_version": None,
                    "canary_percent": 0,
                }
            elif event.version != current.version:
                fields = {"canary_version": event.version, "canary_percent": event.weight, "status": "canary"}
        case EndpointScaledToZero():
            what, note = "scaled to zero", f"idle for {event.idle_s:.1f} s"
            fields = {"status": "scaled_to_zero"}
        case EndpointRetired():
            what, note = "retired", f"version {event.version}: {event.reason}"
            if current.canary_version == event.version:
                fields = {"canary_version": None, "canary_percent": 0, "status": "ready"}
        case EndpointCanaryDecided():
            what, note = (
                f"canary {event.outcome.replace('_', ' ')}",
                f"version {event.canary}: {event.reason}",
            )
            fields = {"canary_version": None, "canary_percent": 0, "reason": event.reason}
            if event.outcome == "promoted":
                fields |= {"version": event.canary, "status": "ready"}
        case EndpointFailed():
            what, note = "failed", f"version {event.version}: {event.reason}"
            fields = {"reason": event.reason} | ({"status": "failed"} if event.endpoint_gone else {})
        case EndpointDeleted():
            what, note = "deleted", event.reason
            fields = {"status": "deleted", "canary_version": None, "canary_percent": 0}
        case _:
            return
    await _update(session, "endpoints", "name", name, what, note, fields)


async def on_notebook_event(event: Any, uow: UnitOfWork) -> None:
    fields: dict[str, Any]
    match event:
        case NotebookAdmitted():
            what, note, fields = "admitted", event.reason, {"status": "starting"}
        case NotebookRejected():
            what, note, fields = "rejected", event.reason, {"status": "rejected", "reason": event.reason}
        case NotebookStarted():
            what, note = "running", f"idle shutdown after {event.idle_timeout_s} s"
            fields = {"status": "running", "url": event.url, "stops_at": event.stops_at}
        case NotebookStopped():
            what, note = (
                "stopped",
                event.reason + (f"; saved {', '.join(event.saved)}" if event.saved else ""),
            )
            fields = {"status": "stopped", "reason": event.reason, "saved": json.dumps(event.saved)}
        case _:
            return
    await _update(uow.session, "notebooks", "notebook_id", event.notebook_id, what, note, fields)


ENDPOINT_EVENTS = (
    EndpointAdmitted,
    EndpointRejected,
    EndpointScanned,
    EndpointReady,
    EndpointScaledToZero,
    EndpointRetired,
    EndpointCanaryDecided,
    EndpointFailed,
    EndpointDeleted,
)
NOTEBOOK_EVENTS = (NotebookAdmitted, NotebookRejected, NotebookStarted, NotebookStopped)
JSONB_FIELDS = {"scan", "saved"}


async def _update(
    session: AsyncSession,
    table: str,
    key: str,
    value: str,
    what: str,
    note: str,
    fields: dict[str, Any],
    *,
    extra_sql: str = "",
    params: dict[str, Any] | None = None,
) -> None:
    sets = ", ".join(f"{f} = CAST(:f_{f} AS JSONB)" if f in JSONB_FIELDS else f"{f} = :f_{f}" for f in fields)
    history = json.dumps([_entry(what, note)])
    await session.execute(
        text(
            f"UPDATE {table} SET {sets + ', ' if sets else ''}"
            f" history = history || CAST(:h AS JSONB), updated_at = now(){extra_sql}"
            f" WHERE {key} = :k"
        ),
        {"k": value, "h": history, **{f"f_{f}": v for f, v in fields.items()}, **(params or {})},
    )
    await session.execute(
        text(
            f"UPDATE {table} SET history = (SELECT coalesce(jsonb_agg(e ORDER BY i), '[]'::jsonb) FROM"
            f" (SELECT e, i FROM jsonb_array_elements(history) WITH ORDINALITY AS t(e, i)"
            f"  ORDER BY i DESC LIMIT {HISTORY_KEPT}) s)"
            f" WHERE {key} = :k AND jsonb_array_length(history) > {HISTORY_KEPT}"
        ),
        {"k": value},
    )


def _entry(what: str, note: str) -> dict[str, str]:
    return {"at": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": what, "detail": note}
