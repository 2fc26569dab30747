"""Team API keys: ``ak_<key id>_<secret>``, stored as a SHA-256 digest only.

Keys are 256-bit random secrets, so a fast digest is as strong as a slow one here; the key id
prefix lets a key be named in logs and revoked without ever printing the secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


def new_key() -> tuple[str, str]:
    """A fresh (key_id, plaintext key)."""
    key_id = secrets.token_hex(4)
    return key_id, f"ak_{key_id}_{secrets.token_urlsafe(32)}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def team_for(session: AsyncSession, key: str) -> str | None:
    row = await session.execute(
        text("SELECT team FROM api_keys WHERE key_hash = :h AND revoked_at IS NULL"),
        {"h": digest(key)},
    )
    return row.scalar_one_or_none()


async def store(session: AsyncSession, *, key_id: str, team: str, key: str) -> None:
    await session.execute(
        text("INSERT INTO api_keys (key_id, team, key_hash) VALUES (:i, :t, :h)"),
        {"i": key_id, "t": team, "h": digest(key)},
    )


async def seed_demo_keys(session: AsyncSession, *, teams: list[str], known: dict[str, str]) -> dict[str, str]:
    """Give each team without a working key a new one; returns team -> plaintext key.

    For the local stack only: the caller writes the result where the CLI finds it.
    """
    seeded = dict(known)
    for team in teams:
        if team in seeded and await team_for(session, seeded[team]) == team:
            continue
        key_id, key = new_key()
        await store(session, key_id=key_id, team=team, key=key)
        seeded[team] = key
    return seeded


def read_keys_file(path: Path) -> dict[str, str]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def write_keys_file(path: Path, keys: dict[str, str]) -> None:
    """Atomically, readable by the owner only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.write_text(json.dumps(keys, indent=2))
    os.replace(tmp, path)
