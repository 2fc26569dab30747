"""HTTP routes for agents' state: memory, conversations and checkpoints, all within the caller's team."""

# No `from __future__ import annotations`: FastAPI must see the route-local `Team` dependency.
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from services.agent_runtime import state
from services.agent_runtime.crypto import Keyring
from services.kit.db import Database

BIGINT = 2**63 - 1  # seq and step are BIGINT columns: a larger number is a 422, not a server error
TTL = "Seconds until it expires (1 to 90 days); omitted or null keeps it until deleted."


class MemoryPut(BaseModel):
    value: Any = Field(description="Any JSON value, at most 256 KiB as JSON.")
    ttl_s: int | None = Field(default=None, description=TTL)


class MemoryWritten(BaseModel):
    key: str
    expires_at: datetime | None


class MemoryKeys(BaseModel):
    keys: list[str] = Field(description="The agent's unexpired keys, in order.")


class MessageAppend(BaseModel):
    role: str = Field(description="Who spoke: user, assistant, tool, system...")
    content: Any = Field(description="Any JSON value, at most 256 KiB as JSON.")
    ttl_s: int | None = Field(default=None, description=TTL)


class MessageAppended(BaseModel):
    conversation: str
    seq: int = Field(description="The message's position in the conversation, from 1.")


class Conversation(BaseModel):
    conversation: str
    messages: list[state.Message]


class CheckpointPut(BaseModel):
    step: int = Field(le=BIGINT,
                      description="The step the run has completed; saving a step again replaces it.")
    value: Any = Field(description="Any JSON value, at most 256 KiB as JSON.")
    ttl_s: int | None = Field(default=None, description=TTL)


class CheckpointSaved(BaseModel):
    run_id: str
    step: int
    expires_at: datetime | None


def state_routes(*, db: Database, keyring: Keyring, team_dep: Callable[..., Awaitable[str]],
                 max_bytes: int = state.MAX_VALUE_BYTES) -> APIRouter:
    router = APIRouter(prefix="/v1/agents/{agent}", tags=["agent state"])
    Team = Annotated[str, Depends(team_dep)]

    @router.put("/memory/{key}", response_model=MemoryWritten)
    async def put_memory(agent: str, key: str, body: MemoryPut, team: Team) -> MemoryWritten:
        """Set a memory key, replacing its value and TTL."""
        with _as_http():
            async with db.transaction() as session:
                expires_at = await state.put_memory(
                    session, keyring=keyring, team=team, agent=agent, key=key, value=body.value,
                    ttl_s=body.ttl_s, now=_now(), max_bytes=max_bytes)
        return MemoryWritten(key=key, expires_at=expires_at)

    @router.get("/memory/{key}", response_model=state.MemoryEntry)
    async def get_memory(agent: str, key: str, team: Team) -> state.MemoryEntry:
        with _as_http():
            async with db.transaction() as session:
                return await state.get_memory(session, keyring=keyring, team=team, agent=agent, key=key,
                                              now=_now())

    @router.delete("/memory/{key}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_memory(agent: str, key: str, team: Team) -> Response:
        with _as_http():
            async with db.transaction() as session:
                await state.delete_memory(session, team=team, agent=agent, key=key)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    @router.get("/memory", response_model=MemoryKeys)
    async def list_memory(agent: str, team: Team,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> MemoryKeys:
        async with db.transaction() as session:
            keys = await state.list_memory(session, team=team, agent=agent, now=_now(), limit=limit)
        return MemoryKeys(keys=keys)

    @router.post("/conversations/{conversation}", status_code=status.HTTP_201_CREATED,
                 response_model=MessageAppended)
    async def append_message(agent: str, conversation: str, body: MessageAppend,
                             team: Team) -> MessageAppended:
        """Add a message at the end of a conversation (starting it if new)."""
        with _as_http():
            async with db.transaction() as session:
                seq = await state.append_message(
                    session, keyring=keyring, team=team, agent=agent, conversation=conversation,
                    role=body.role, content=body.content, ttl_s=body.ttl_s, now=_now(),
                    max_bytes=max_bytes)
        return MessageAppended(conversation=conversation, seq=seq)

    @router.get("/conversations/{conversation}", response_model=Conversation)
    async def read_conversation(agent: str, conversation: str, team: Team,
                                after: Annotated[int, Query(ge=0, le=BIGINT)] = 0,
                                limit: Annotated[int, Query(ge=1, le=500)] = 500) -> Conversation:
        """Unexpired messages after seq ``after``, oldest first; page on with the last seq."""
        with _as_http():
            async with db.transaction() as session:
                messages = await state.read_conversation(
                    session, keyring=keyring, team=team, agent=agent, conversation=conversation,
                    now=_now(), after=after, limit=limit)
        return Conversation(conversation=conversation, messages=messages)

    @router.put("/checkpoints/{run_id}", response_model=CheckpointSaved)
    async def save_checkpoint(agent: str, run_id: str, body: CheckpointPut, team: Team) -> CheckpointSaved:
        with _as_http():
            async with db.transaction() as session:
                expires_at = await state.save_checkpoint(
                    session, keyring=keyring, team=team, agent=agent, run_id=run_id, step=body.step,
                    value=body.value, ttl_s=body.ttl_s, now=_now(), max_bytes=max_bytes)
        return CheckpointSaved(run_id=run_id, step=body.step, expires_at=expires_at)

    @router.get("/checkpoints/{run_id}", response_model=state.Checkpoint)
    async def latest_checkpoint(agent: str, run_id: str, team: Team) -> state.Checkpoint:
        """The run's unexpired checkpoint with the highest step."""
        with _as_http():
            async with db.transaction() as session:
                return await state.latest_checkpoint(session, keyring=keyring, team=team, agent=agent,
                                                     run_id=run_id, now=_now())

    return router


@contextmanager
def _as_http() -> Iterator[None]:
    """The store's refusals as HTTP statuses; its messages already say what to do."""
    try:
        yield
    except state.StateNotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except state.StateExpired as exc:
        raise HTTPException(410, detail=str(exc)) from None
    except state.StateTooLarge as exc:
        raise HTTPException(413, detail=str(exc)) from None
    except state.StateInvalid as exc:
        raise HTTPException(422, detail=str(exc)) from None


def _now() -> datetime:
    return datetime.now(UTC)
