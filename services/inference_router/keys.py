"""Virtual keys: ``vk_<key id>_<secret>``, stored as a SHA-256 digest, cached briefly.

A key belongs to a team (and optionally a user or app) and carries its limits. Replicas read
keys from Postgres on a cache miss and keep them ``ttl_s``, so a revoked key stops working on
every replica within that time. Unknown keys are cached too (briefly), so guessing keys costs
the database nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import Database


class KeySpec(BaseModel):
    """What an admin asks for when creating a key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    team: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64)
    name: str = Field(default="default", min_length=1, max_length=64)
    user: str | None = Field(default=None, max_length=128)
    models: tuple[str, ...] = Field(default=(), description="Aliases it may use; empty: all the team's.")
    rpm: int | None = Field(default=None, ge=1, le=10_000_000)
    tpm: int | None = Field(default=None, ge=1, le=10_000_000_000)
    max_parallel: int | None = Field(default=None, ge=1, le=100_000)
    budget_usd: Decimal | None = Field(default=None, gt=0, le=10_000_000, decimal_places=2)


@dataclass(frozen=True)
class VirtualKey:
    key_id: str
    spec: KeySpec

    @property
    def team(self) -> str:
        return self.spec.team

    def may_use(self, alias: str) -> bool:
        return not self.spec.models or alias in self.spec.models

    def public(self) -> dict[str, Any]:
        return {"key_id": self.key_id, **self.spec.model_dump(mode="json")}


def new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(4)
    return key_id, f"vk_{key_id}_{secrets.token_urlsafe(32)}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def store(session: AsyncSession, *, key_id: str, key: str, spec: KeySpec) -> VirtualKey:
    await session.execute(
        text("INSERT INTO virtual_keys (key_id, key_hash, spec) VALUES (:i, :h, CAST(:s AS jsonb))"),
        {"i": key_id, "h": digest(key), "s": spec.model_dump_json()},
    )
    return VirtualKey(key_id, spec)


async def revoke(session: AsyncSession, *, key_id: str) -> bool:
    result = await session.execute(
        text("UPDATE virtual_keys SET revoked_at = now() WHERE key_id = :i AND revoked_at IS NULL"),
        {"i": key_id},
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_keys(session: AsyncSession, *, team: str | None) -> list[VirtualKey]:
    rows = await session.execute(
        text("SELECT key_id, spec FROM virtual_keys WHERE revoked_at IS NULL"
             " AND (CAST(:t AS text) IS NULL OR spec->>'team' = :t) ORDER BY created_at"),
        {"t": team},
    )
    return [VirtualKey(r.key_id, KeySpec.model_validate(r.spec)) for r in rows]


@dataclass
class KeyCache:
    db: Database
    ttl_s: float = 5.0
    negative_ttl_s: float = 1.0
    _entries: dict[str, tuple[VirtualKey | None, float]] = field(default_factory=dict)

    async def find(self, key: str) -> VirtualKey | None:
        hashed = digest(key)
        hit = self._entries.get(hashed)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self.db.transaction() as session:
            row = (await session.execute(
                text("SELECT key_id, spec FROM virtual_keys WHERE key_hash = :h AND revoked_at IS NULL"),
                {"h": hashed})).first()
        found = VirtualKey(row.key_id, KeySpec.model_validate(row.spec)) if row else None
        if len(self._entries) > 100_000:
            self._entries.clear()
        self._entries[hashed] = (found, now + (self.ttl_s if found else self.negative_ttl_s))
        return found


async def seed_demo_keys(db: Database, *, teams: list[str], path: Path) -> None:
    """Local stack only: make sure each team has a working key, written to ``path``."""
    known = _read_keys(path)
    cache = KeyCache(db)
    async with db.transaction() as session:
        for team in teams:
            found = await cache.find(known[team]) if team in known else None
            if found is None or found.team != team:
                key_id, key = new_key()
                await store(session, key_id=key_id, key=key, spec=KeySpec(team=team, name="demo"))
                known[team] = key
    _write_keys(path, known)


def _read_keys(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _write_keys(path: Path, known: dict[str, str]) -> None:
    """Atomically (readers, such as the agent runtime, never see half a file) and readable by
    the owner only from the first byte (mode 0600 at creation, not after the write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover from a crash keeps its mode otherwise
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(known, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
