"""The model registry: versions registered from completed jobs, with lineage, and aliases.

Lineage is dataset (path + content digest) -> job (id, params, command, code digest, params it
logged) -> model version (artifacts with digests, metrics), plus the job's run on the MLflow server
when it was copied there. Aliases (``production``) replace stages.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import Field, SQLModel

from contracts import JobCompleted

MIGRATION_STATEMENTS = (
    """CREATE TABLE model_versions (
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        version INT NOT NULL,
        job_id TEXT NOT NULL UNIQUE,
        artifacts JSONB NOT NULL,
        metrics JSONB NOT NULL,
        lineage JSONB NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (team, name, version))""",
    """CREATE TABLE model_aliases (
        team TEXT NOT NULL,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INT NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (team, name, alias),
        FOREIGN KEY (team, name, version) REFERENCES model_versions (team, name, version))""",
)


class ModelVersionPublic(SQLModel):
    name: str
    version: int
    job_id: str
    artifacts: list[dict[str, Any]] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    created_at: datetime


class ModelPublic(SQLModel):
    name: str
    latest_version: int
    aliases: dict[str, int] = Field(default_factory=dict)
    versions: list[ModelVersionPublic] = Field(default_factory=list)


def lineage_of(request: dict[str, Any], completed: JobCompleted) -> dict[str, Any]:
    return {
        "dataset": {"path": request.get("dataset"), "sha256": completed.dataset_digest},
        "job": {
            "id": completed.job_id, "type": request.get("job_type"), "product": request.get("product"),
            "gpus": request.get("gpus"), "params": request.get("params", {}),
            "command": request.get("command", []), "code_sha256": completed.code_digest,
            "logged_params": completed.logged_params,
        },
        "tracking": completed.tracking.model_dump() if completed.tracking else None,
    }


async def register_version(session: AsyncSession, *, team: str, name: str, request: dict[str, Any],
                           completed: JobCompleted) -> int:
    """Register the job's outputs as the next version of ``name`` (once per job)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{team}/{name}"})
    existing = await session.execute(
        text("SELECT version FROM model_versions WHERE job_id = :j"), {"j": completed.job_id}
    )
    if (version := existing.scalar_one_or_none()) is not None:
        return int(version)
    latest = await session.execute(
        text("SELECT coalesce(max(version), 0) FROM model_versions WHERE team = :t AND name = :n"),
        {"t": team, "n": name},
    )
    version = int(latest.scalar_one()) + 1
    await session.execute(
        text(
            "INSERT INTO model_versions (team, name, version, job_id, artifacts, metrics, lineage)"
            " VALUES (:t, :n, :v, :j, CAST(:a AS JSONB), CAST(:m AS JSONB), CAST(:l AS JSONB))"
        ),
        {"t": team, "n": name, "v": version, "j": completed.job_id,
         "a": json.dumps([a.model_dump(mode="json") for a in completed.stored_artifacts]),
         "m": json.dumps(completed.metrics), "l": json.dumps(lineage_of(request, completed))},
    )
    return version


async def set_alias(session: AsyncSession, *, team: str, name: str, alias: str, version: int) -> bool:
    """Point ``alias`` at ``version``; False when that version does not exist."""
    exists = await session.execute(
        text("SELECT 1 FROM model_versions WHERE team = :t AND name = :n AND version = :v"),
        {"t": team, "n": name, "v": version},
    )
    if exists.first() is None:
        return False
    await session.execute(
        text(
            "INSERT INTO model_aliases (team, name, alias, version) VALUES (:t, :n, :a, :v)"
            " ON CONFLICT (team, name, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()"
        ),
        {"t": team, "n": name, "a": alias, "v": version},
    )
    return True


async def get_model(session: AsyncSession, *, team: str, name: str) -> ModelPublic | None:
    rows = (await session.execute(
        text("SELECT * FROM model_versions WHERE team = :t AND name = :n ORDER BY version DESC"),
        {"t": team, "n": name},
    )).mappings().all()
    if not rows:
        return None
    aliases = {row.alias: row.version for row in (await session.execute(
        text("SELECT alias, version FROM model_aliases WHERE team = :t AND name = :n"),
        {"t": team, "n": name},
    )).all()}
    versions = [
        ModelVersionPublic.model_validate(
            {**dict(row), "aliases": sorted(a for a, v in aliases.items() if v == row["version"])}
        )
        for row in rows
    ]
    return ModelPublic(name=name, latest_version=versions[0].version, aliases=aliases,
                       versions=versions)


async def list_models(session: AsyncSession, *, team: str) -> list[dict[str, Any]]:
    rows = (await session.execute(
        text(
            "SELECT name, max(version) AS latest_version, count(*) AS versions, max(created_at) AS updated_at"
            " FROM model_versions WHERE team = :t GROUP BY name ORDER BY name"
        ),
        {"t": team},
    )).mappings().all()
    return [dict(row) for row in rows]
