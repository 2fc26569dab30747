"""Agents' persistent state: memory (key/value), conversations (append-only) and checkpoints.

Every value is JSON, sealed with its team's data key and bound to its row (see crypto.py), so
the tables hold only ciphertext. Every query names the team: one team's rows cannot be read
through another's. Entries may carry a TTL; an expired entry reads as expired at once, and
``sweep_expired`` deletes it later.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.agent_runtime import crypto
from services.agent_runtime.crypto import Keyring, row_aad
from services.agent_runtime.crypto import rotate_keys as rotate_keys  # part of this module's API
from services.kit.db import Migration

MAX_VALUE_BYTES = 256 * 1024
MAX_TTL_S = 90 * 86400
MAX_NAME_CHARS = 200
_LIVE = "(expires_at IS NULL OR expires_at > :now)"

STATE_MIGRATIONS: tuple[Migration, ...] = (
    crypto.DATA_KEYS_MIGRATION,
    Migration(21, "agent memory", (
        """CREATE TABLE agent_memory (
            team TEXT NOT NULL, agent TEXT NOT NULL, key TEXT NOT NULL,
            ciphertext BYTEA NOT NULL, nonce BYTEA NOT NULL,
            expires_at TIMESTAMPTZ, updated_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (team, agent, key))""",
        "CREATE INDEX agent_memory_expiry ON agent_memory (expires_at) WHERE expires_at IS NOT NULL",
    )),
    Migration(22, "agent conversations", (
        """CREATE TABLE agent_messages (
            team TEXT NOT NULL, agent TEXT NOT NULL, conversation TEXT NOT NULL, seq BIGINT NOT NULL,
            role TEXT NOT NULL, ciphertext BYTEA NOT NULL, nonce BYTEA NOT NULL,
            expires_at TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (team, agent, conversation, seq))""",
        "CREATE INDEX agent_messages_expiry ON agent_messages (expires_at) WHERE expires_at IS NOT NULL",
    )),
    Migration(23, "agent checkpoints", (
        """CREATE TABLE agent_checkpoints (
            team TEXT NOT NULL, agent TEXT NOT NULL, run_id TEXT NOT NULL, step BIGINT NOT NULL,
            ciphertext BYTEA NOT NULL, nonce BYTEA NOT NULL,
            expires_at TIMESTAMPTZ, created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (team, agent, run_id, step))""",
        "CREATE INDEX agent_checkpoints_expiry ON agent_checkpoints (expires_at)"
        " WHERE expires_at IS NOT NULL",
    )),
)


class StateError(Exception):
    """Agent state could not be read or written as asked."""


class StateNotFound(StateError):
    """No such entry in the caller's team (another team's entry reads the same)."""


class StateExpired(StateError):
    """The entry exists but its TTL has passed; the sweeper has not deleted it yet."""


class StateInvalid(StateError, ValueError):
    """Input the store will not take: a TTL out of bounds, a name too long, a value not JSON."""


class StateTooLarge(StateError):
    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(f"the value is {size} bytes as JSON; the limit is {limit} bytes: "
                         "store less, or split it over several keys")
        self.size, self.limit = size, limit


class MemoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: str
    value: Any
    expires_at: datetime | None
    updated_at: datetime


class Message(BaseModel):
    model_config = ConfigDict(frozen=True)
    seq: int
    role: str
    content: Any
    expires_at: datetime | None
    created_at: datetime


class Checkpoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    run_id: str
    step: int
    value: Any
    expires_at: datetime | None
    created_at: datetime


async def put_memory(session: AsyncSession, *, keyring: Keyring, team: str, agent: str, key: str,
                     value: Any, now: datetime, ttl_s: int | None = None,
                     max_bytes: int = MAX_VALUE_BYTES) -> datetime | None:
    """Set ``key`` (replacing any value and TTL it had); returns when it expires."""
    _check_names(agent=agent, key=key)
    expires_at = expiry(now=now, ttl_s=ttl_s)
    sealed = await _seal(session, keyring=keyring, team=team, plaintext=_encode(value, max_bytes),
                         aad=row_aad(team, agent, "memory", key))
    await session.execute(text(
        "INSERT INTO agent_memory (team, agent, key, ciphertext, nonce, expires_at, updated_at)"
        " VALUES (:team, :agent, :key, :ct, :nonce, :exp, :now) ON CONFLICT (team, agent, key) DO UPDATE"
        " SET ciphertext = excluded.ciphertext, nonce = excluded.nonce,"
        " expires_at = excluded.expires_at, updated_at = excluded.updated_at"),
        {"team": team, "agent": agent, "key": key, "ct": sealed.ciphertext, "nonce": sealed.nonce,
         "exp": expires_at, "now": now})
    return expires_at


async def get_memory(session: AsyncSession, *, keyring: Keyring, team: str, agent: str, key: str,
                     now: datetime) -> MemoryEntry:
    row = (await session.execute(text(
        "SELECT ciphertext, nonce, expires_at, updated_at FROM agent_memory"
        " WHERE team = :team AND agent = :agent AND key = :key"),
        {"team": team, "agent": agent, "key": key})).one_or_none()
    what = f"memory key {key!r} of agent {agent!r}"
    if row is None:
        raise StateNotFound(f"no {what} in team {team!r}: write it first with PUT")
    if row.expires_at is not None and row.expires_at <= now:
        raise StateExpired(f"{what} expired at {row.expires_at.isoformat()}: "
                           "write it again, with a longer ttl_s or none, if it is still needed")
    data_key = await crypto.team_data_key(session, keyring=keyring, team=team)
    value = _decode(data_key, row, aad=row_aad(team, agent, "memory", key))
    return MemoryEntry(key=key, value=value, expires_at=row.expires_at, updated_at=row.updated_at)


async def delete_memory(session: AsyncSession, *, team: str, agent: str, key: str) -> None:
    result = await session.execute(text(
        "DELETE FROM agent_memory WHERE team = :team AND agent = :agent AND key = :key"),
        {"team": team, "agent": agent, "key": key})
    if not result.rowcount:  # type: ignore[attr-defined]
        raise StateNotFound(f"no memory key {key!r} of agent {agent!r} in team {team!r} to delete")


async def list_memory(session: AsyncSession, *, team: str, agent: str, now: datetime,
                      limit: int = 1000) -> list[str]:
    """The agent's unexpired keys, in order."""
    rows = await session.execute(text(
        f"SELECT key FROM agent_memory WHERE team = :team AND agent = :agent AND {_LIVE}"
        " ORDER BY key LIMIT :limit"), {"team": team, "agent": agent, "now": now, "limit": limit})
    return list(rows.scalars())


async def append_message(session: AsyncSession, *, keyring: Keyring, team: str, agent: str,
                         conversation: str, role: str, content: Any, now: datetime,
                         ttl_s: int | None = None, max_bytes: int = MAX_VALUE_BYTES) -> int:
    """Add a message at the end of the conversation; returns its sequence number (from 1)."""
    _check_names(agent=agent, conversation=conversation, role=role)
    expires_at = expiry(now=now, ttl_s=ttl_s)
    plaintext = _encode(content, max_bytes)
    ident = {"team": team, "agent": agent, "conv": conversation}
    # Appends to one conversation take turns, so seq is gap-free and in commit order: a reader
    # paging with `after` never misses a message that commits later with a lower seq.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:lock, 0))"),
                          {"lock": row_aad(team, agent, "conversation", conversation).decode()})
    seq = (await session.execute(text(
        "SELECT coalesce(max(seq), 0) + 1 FROM agent_messages"
        " WHERE team = :team AND agent = :agent AND conversation = :conv"), ident)).scalar_one()
    sealed = await _seal(session, keyring=keyring, team=team, plaintext=plaintext,
                         aad=row_aad(team, agent, "conversation", conversation, str(seq), role))
    await session.execute(text(
        "INSERT INTO agent_messages (team, agent, conversation, seq, role, ciphertext, nonce,"
        " expires_at, created_at) VALUES (:team, :agent, :conv, :seq, :role, :ct, :nonce, :exp, :now)"),
        {**ident, "seq": seq, "role": role, "ct": sealed.ciphertext, "nonce": sealed.nonce,
         "exp": expires_at, "now": now})
    return int(seq)


async def read_conversation(session: AsyncSession, *, keyring: Keyring, team: str, agent: str,
                            conversation: str, now: datetime, after: int = 0,
                            limit: int = 500) -> list[Message]:
    """Unexpired messages with seq > ``after``, oldest first."""
    ident = {"team": team, "agent": agent, "conv": conversation}
    where = "team = :team AND agent = :agent AND conversation = :conv"
    rows = (await session.execute(text(
        f"SELECT seq, role, ciphertext, nonce, expires_at, created_at FROM agent_messages WHERE {where}"
        f" AND seq > :after AND {_LIVE} ORDER BY seq LIMIT :limit"),
        {**ident, "after": after, "now": now, "limit": limit})).all()
    what = f"conversation {conversation!r} of agent {agent!r}"
    if not rows:
        live, stored = await _presence(session, table="agent_messages", where=where,
                                       params={**ident, "now": now})
        if live:
            return []  # the reader is past the last message
        raise _absent(stored=stored, what=what, team=team)
    data_key = await crypto.team_data_key(session, keyring=keyring, team=team)
    return [Message(seq=r.seq, role=r.role, expires_at=r.expires_at, created_at=r.created_at,
                    content=_decode(data_key, r, aad=row_aad(team, agent, "conversation", conversation,
                                                             str(r.seq), r.role)))
            for r in rows]


async def save_checkpoint(session: AsyncSession, *, keyring: Keyring, team: str, agent: str, run_id: str,
                          step: int, value: Any, now: datetime, ttl_s: int | None = None,
                          max_bytes: int = MAX_VALUE_BYTES) -> datetime | None:
    """Record the run's state after ``step``. Saving a step again replaces it, so a retried step
    is harmless. Returns when the checkpoint expires."""
    _check_names(agent=agent, run_id=run_id)
    if step < 0:
        raise StateInvalid(f"step must be 0 or more; got {step}")
    expires_at = expiry(now=now, ttl_s=ttl_s)
    sealed = await _seal(session, keyring=keyring, team=team, plaintext=_encode(value, max_bytes),
                         aad=row_aad(team, agent, "checkpoint", run_id, str(step)))
    await session.execute(text(
        "INSERT INTO agent_checkpoints (team, agent, run_id, step, ciphertext, nonce, expires_at, created_at)"
        " VALUES (:team, :agent, :run, :step, :ct, :nonce, :exp, :now)"
        " ON CONFLICT (team, agent, run_id, step) DO UPDATE SET ciphertext = excluded.ciphertext,"
        " nonce = excluded.nonce, expires_at = excluded.expires_at, created_at = excluded.created_at"),
        {"team": team, "agent": agent, "run": run_id, "step": step, "ct": sealed.ciphertext,
         "nonce": sealed.nonce, "exp": expires_at, "now": now})
    return expires_at


async def latest_checkpoint(session: AsyncSession, *, keyring: Keyring, team: str, agent: str,
                            run_id: str, now: datetime) -> Checkpoint:
    """The unexpired checkpoint with the highest step."""
    ident = {"team": team, "agent": agent, "run": run_id}
    where = "team = :team AND agent = :agent AND run_id = :run"
    row = (await session.execute(text(
        f"SELECT step, ciphertext, nonce, expires_at, created_at FROM agent_checkpoints WHERE {where}"
        f" AND {_LIVE} ORDER BY step DESC LIMIT 1"), {**ident, "now": now})).one_or_none()
    if row is None:
        _, stored = await _presence(session, table="agent_checkpoints", where=where,
                                    params={**ident, "now": now})
        raise _absent(stored=stored, what=f"checkpoint of run {run_id!r} of agent {agent!r}", team=team)
    data_key = await crypto.team_data_key(session, keyring=keyring, team=team)
    value = _decode(data_key, row, aad=row_aad(team, agent, "checkpoint", run_id, str(row.step)))
    return Checkpoint(run_id=run_id, step=row.step, value=value, expires_at=row.expires_at,
                      created_at=row.created_at)


async def sweep_expired(session: AsyncSession, *, now: datetime) -> int:
    """Delete every entry expired at ``now``; returns how many."""
    deleted = 0
    for table in ("agent_memory", "agent_messages", "agent_checkpoints"):
        result = await session.execute(text(f"DELETE FROM {table} WHERE expires_at <= :now"), {"now": now})
        deleted += result.rowcount  # type: ignore[attr-defined]
    return deleted


def expiry(*, now: datetime, ttl_s: int | None) -> datetime | None:
    """When an entry written at ``now`` expires; None keeps it until it is deleted."""
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not 0 < ttl_s <= MAX_TTL_S:
        raise StateInvalid(f"ttl_s must be between 1 and {MAX_TTL_S} seconds (90 days); got {ttl_s}: "
                         "give a positive number of seconds, or none to keep the entry until deleted")
    return now + timedelta(seconds=ttl_s)


def _check_names(**names: str) -> None:
    for field, name in names.items():
        if not 0 < len(name) <= MAX_NAME_CHARS:
            raise StateInvalid(f"{field} must be 1 to {MAX_NAME_CHARS} characters; got {len(name)}")


def _encode(value: Any, max_bytes: int) -> bytes:
    try:
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise StateInvalid(f"the value is not JSON ({exc}): store only objects, arrays, strings, "
                         "finite numbers, booleans and null") from None
    if len(data) > max_bytes:
        raise StateTooLarge(size=len(data), limit=max_bytes)
    return data


def _decode(data_key: bytes, row: Any, *, aad: bytes) -> Any:
    return json.loads(crypto.open_sealed(data_key, crypto.Sealed(row.nonce, row.ciphertext), aad=aad))


async def _seal(session: AsyncSession, *, keyring: Keyring, team: str, plaintext: bytes,
                aad: bytes) -> crypto.Sealed:
    data_key = await crypto.team_data_key(session, keyring=keyring, team=team, create=True)
    return crypto.seal(data_key, plaintext, aad=aad)


async def _presence(session: AsyncSession, *, table: str, where: str,
                    params: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the entry has unexpired rows, and whether it has any rows at all."""
    row = (await session.execute(text(
        "SELECT coalesce(bool_or(expires_at IS NULL OR expires_at > :now), false), count(*) > 0"
        f" FROM {table} WHERE {where}"), params)).one()
    return bool(row[0]), bool(row[1])


def _absent(*, stored: bool, what: str, team: str) -> StateError:
    if stored:
        return StateExpired(f"every {what} has expired: write it again, with a longer ttl_s or none, "
                            "if it is still needed")
    return StateNotFound(f"no {what} in team {team!r}: write it first")
