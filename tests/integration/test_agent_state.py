"""Agents' state on real Postgres: only ciphertext at rest, TTLs, the sweeper, team isolation,
size limits, master key rotation, and the HTTP routes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Header
from sqlalchemy import text

from services.agent_runtime import state
from services.agent_runtime.crypto import DecryptionError, Keyring, UnknownMasterKey
from services.agent_runtime.state_api import state_routes
from services.kit.db import Database
from services.kit.http import create_http_app
from services.kit.metrics import Metrics

pytestmark = pytest.mark.integration
K1, K2 = os.urandom(32), os.urandom(32)
KEYRING = Keyring(master_keys={"k1": K1}, active="k1")
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SECRET = "the-secret-plan-42"
DATA_TABLES = ("agent_memory", "agent_messages", "agent_checkpoints")
AGENT = "/v1/agents/drafter"


@pytest.fixture
async def db(database_url: str, prefix: str) -> AsyncIterator[Database]:
    database = Database(url=database_url, schema=f"{prefix}_agents")
    await database.migrate(state.STATE_MIGRATIONS)
    yield database
    await database.drop_schema()
    await database.dispose()


async def put(db: Database, *, team: str = "legal", key: str = "plan", value: Any = SECRET,
              now: datetime = T0, keyring: Keyring = KEYRING, **extra: Any) -> None:
    async with db.transaction() as session:
        await state.put_memory(session, keyring=keyring, team=team, agent="drafter", key=key, value=value,
                               now=now, **extra)


async def get(db: Database, *, team: str = "legal", key: str = "plan", now: datetime = T0,
              keyring: Keyring = KEYRING) -> Any:
    async with db.transaction() as session:
        entry = await state.get_memory(session, keyring=keyring, team=team, agent="drafter", key=key, now=now)
    return entry.value


async def append(db: Database, content: Any, *, team: str = "legal", now: datetime = T0,
                 keyring: Keyring = KEYRING, **extra: Any) -> int:
    async with db.transaction() as session:
        return await state.append_message(session, keyring=keyring, team=team, agent="drafter",
                                          conversation="c1", role="user", content=content, now=now, **extra)


async def read(db: Database, *, team: str = "legal", now: datetime = T0, keyring: Keyring = KEYRING,
               after: int = 0) -> list[state.Message]:
    async with db.transaction() as session:
        return await state.read_conversation(session, keyring=keyring, team=team, agent="drafter",
                                             conversation="c1", now=now, after=after)


async def checkpoint(db: Database, step: int, value: Any, *, now: datetime = T0, **extra: Any) -> None:
    async with db.transaction() as session:
        await state.save_checkpoint(session, keyring=KEYRING, team="legal", agent="drafter", run_id="r1",
                                    step=step, value=value, now=now, **extra)


async def latest(db: Database, *, team: str = "legal", now: datetime = T0,
                 keyring: Keyring = KEYRING) -> state.Checkpoint:
    async with db.transaction() as session:
        return await state.latest_checkpoint(session, keyring=keyring, team=team, agent="drafter",
                                             run_id="r1", now=now)


async def rows(db: Database, sql: str) -> list[Any]:
    async with db.transaction() as session:
        return list((await session.execute(text(sql))).all())


async def test_the_tables_hold_only_ciphertext_and_values_round_trip(db: Database) -> None:
    value = {"plan": SECRET, "steps": [1, 2.5, None, True], "note": "naïve ☃"}
    await put(db, value=value)
    await append(db, f"tell nobody: {SECRET}")
    await checkpoint(db, 3, {"cursor": SECRET})
    assert await get(db) == value
    assert [m.content for m in await read(db)] == [f"tell nobody: {SECRET}"]
    assert (await latest(db)).value == {"cursor": SECRET}
    for table in DATA_TABLES:
        (row,) = await rows(db, f"SELECT ciphertext, nonce, t::text AS whole FROM {table} t")
        assert SECRET not in row.whole and SECRET.encode() not in row.ciphertext
        assert len(row.nonce) == 12 and len(row.ciphertext) > len(SECRET) + 16
    (key_row,) = await rows(db, "SELECT team, master_key_id, length(wrapped_key) AS n FROM agent_data_keys")
    assert (key_row.team, key_row.master_key_id, key_row.n) == ("legal", "k1", 32 + 16)


async def test_a_ciphertext_copied_into_another_row_does_not_decrypt(db: Database) -> None:
    await put(db, key="plan")
    await put(db, key="decoy", value="harmless")
    async with db.transaction() as session:
        await session.execute(text(
            "UPDATE agent_memory d SET ciphertext = p.ciphertext, nonce = p.nonce FROM agent_memory p"
            " WHERE d.key = 'decoy' AND p.key = 'plan'"))
    with pytest.raises(DecryptionError):
        await get(db, key="decoy")


async def test_another_team_cannot_read_list_or_delete_a_teams_state(db: Database) -> None:
    await put(db, team="legal")
    await append(db, "hello", team="legal")
    await checkpoint(db, 1, "state")
    with pytest.raises(state.StateNotFound, match="no memory key 'plan' of agent 'drafter' in team 'fin"):
        await get(db, team="finance")
    with pytest.raises(state.StateNotFound):
        await read(db, team="finance")
    with pytest.raises(state.StateNotFound):
        await latest(db, team="finance")
    async with db.transaction() as session:
        assert await state.list_memory(session, team="finance", agent="drafter", now=T0) == []
    with pytest.raises(state.StateNotFound):
        async with db.transaction() as session:
            await state.delete_memory(session, team="finance", agent="drafter", key="plan")
    assert await get(db, team="legal") == SECRET


async def test_an_expired_entry_reads_as_expired_before_any_sweep(db: Database) -> None:
    await put(db, ttl_s=60)
    assert await get(db, now=T0 + timedelta(seconds=59)) == SECRET
    with pytest.raises(state.StateExpired, match="expired at 2026-11-01T12:01:00"):
        await get(db, now=T0 + timedelta(seconds=60))
    async with db.transaction() as session:
        later = T0 + timedelta(hours=1)
        assert await state.list_memory(session, team="legal", agent="drafter", now=later) == []
    await append(db, "short-lived", ttl_s=60)
    await append(db, "longer", ttl_s=600)
    assert [m.content for m in await read(db, now=T0 + timedelta(seconds=120))] == ["longer"]
    with pytest.raises(state.StateExpired):
        await read(db, now=T0 + timedelta(seconds=600))
    await checkpoint(db, 1, "step one", ttl_s=3600)
    await checkpoint(db, 2, "step two", ttl_s=60)
    assert (await latest(db, now=T0 + timedelta(seconds=120))).step == 1  # step 2 has expired
    with pytest.raises(state.StateExpired):
        await latest(db, now=T0 + timedelta(hours=2))


async def test_the_sweeper_deletes_exactly_the_expired_rows(db: Database) -> None:
    await put(db, key="gone", ttl_s=60)
    await put(db, key="stays", ttl_s=3600)
    await put(db, key="forever")
    await append(db, "gone", ttl_s=60)
    await append(db, "stays")
    await checkpoint(db, 1, "gone", ttl_s=30)
    async with db.transaction() as session:
        assert await state.sweep_expired(session, now=T0 + timedelta(seconds=60)) == 3
    async with db.transaction() as session:
        assert await state.sweep_expired(session, now=T0 + timedelta(seconds=60)) == 0
    assert sorted(r.key for r in await rows(db, "SELECT key FROM agent_memory")) == ["forever", "stays"]
    assert [m.content for m in await read(db, now=T0)] == ["stays"]
    with pytest.raises(state.StateNotFound):
        await latest(db)


async def test_values_over_the_limit_and_bad_ttls_are_refused_and_nothing_is_stored(db: Database) -> None:
    with pytest.raises(state.StateTooLarge, match=r"is 262147 bytes as JSON; the limit is 262144 bytes"):
        await put(db, value="x" * (256 * 1024 + 1))
    with pytest.raises(state.StateTooLarge, match="the limit is 100 bytes"):
        await append(db, "y" * 200, max_bytes=100)
    for ttl_s in (0, -5, 90 * 86400 + 1):
        with pytest.raises(ValueError, match=f"ttl_s must be between 1 and 7776000 seconds.*got {ttl_s}"):
            await put(db, ttl_s=ttl_s)
    with pytest.raises(ValueError, match="not JSON"):
        await put(db, value=float("nan"))
    assert await rows(db, "SELECT 1 FROM agent_memory UNION ALL SELECT 1 FROM agent_messages") == []
    await put(db, ttl_s=90 * 86400)
    assert await get(db, now=T0 + timedelta(days=89)) == SECRET


async def test_concurrent_appends_get_gap_free_seqs_and_first_writes_share_one_data_key(
        db: Database) -> None:
    seqs = await asyncio.gather(*(append(db, f"m{i}", team="newteam") for i in range(12)))
    assert sorted(seqs) == list(range(1, 13))
    messages = await read(db, team="newteam")
    assert [m.seq for m in messages] == list(range(1, 13))
    assert {m.content for m in messages} == {f"m{i}" for i in range(12)}
    assert [m.seq for m in await read(db, team="newteam", after=10)] == [11, 12]
    assert len(await rows(db, "SELECT 1 FROM agent_data_keys WHERE team = 'newteam'")) == 1


async def test_rotation_rewraps_data_keys_and_leaves_the_data_bytes_alone(db: Database) -> None:
    for team in ("legal", "finance"):
        await put(db, team=team, value=f"{team}-{SECRET}")
        await append(db, f"{team} says hi", team=team)
    await checkpoint(db, 1, "cp")
    snapshot = "SELECT team, ciphertext, nonce FROM {} ORDER BY 1, 2"
    before = {t: await rows(db, snapshot.format(t)) for t in DATA_TABLES}
    both = Keyring(master_keys={"k1": K1, "k2": K2}, active="k2")
    async with db.transaction() as session:
        assert await state.rotate_keys(session, keyring=both) == 2
    async with db.transaction() as session:
        assert await state.rotate_keys(session, keyring=both) == 0
    assert {t: await rows(db, snapshot.format(t)) for t in DATA_TABLES} == before
    keys = await rows(db, "SELECT master_key_id, rotated_at FROM agent_data_keys")
    assert {k.master_key_id for k in keys} == {"k2"} and all(k.rotated_at for k in keys)
    only_new = Keyring(master_keys={"k2": K2}, active="k2")
    for team in ("legal", "finance"):
        assert await get(db, team=team, keyring=both) == f"{team}-{SECRET}"
        assert await get(db, team=team, keyring=only_new) == f"{team}-{SECRET}"
        assert [m.content for m in await read(db, team=team, keyring=only_new)] == [f"{team} says hi"]
    assert (await latest(db, keyring=only_new)).value == "cp"
    with pytest.raises(UnknownMasterKey, match="master key 'k2'"):
        await get(db, keyring=KEYRING)


async def team_from_header(x_team: Annotated[str, Header()]) -> str:
    return x_team


@pytest.fixture
async def client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_http_app(service="agent-runtime", metrics=Metrics("agent-runtime"), checks={})
    app.include_router(state_routes(db=db, keyring=KEYRING, team_dep=team_from_header, max_bytes=1024))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agents",
                                 headers={"X-Team": "legal"}) as http:
        yield http


async def test_memory_routes(client: httpx.AsyncClient, db: Database) -> None:
    put_ok = await client.put(f"{AGENT}/memory/plan", json={"value": {"p": SECRET}, "ttl_s": 600})
    assert put_ok.status_code == 200 and put_ok.json()["key"] == "plan" and put_ok.json()["expires_at"]
    got = await client.get(f"{AGENT}/memory/plan")
    assert got.status_code == 200 and got.json()["value"] == {"p": SECRET}
    assert (await client.get(f"{AGENT}/memory")).json() == {"keys": ["plan"]}
    other = await client.get(f"{AGENT}/memory/plan", headers={"X-Team": "finance"})
    assert other.status_code == 404 and "no memory key 'plan'" in other.json()["detail"]
    assert (await client.delete(f"{AGENT}/memory/plan")).status_code == 204
    gone = await client.get(f"{AGENT}/memory/plan")
    assert gone.status_code == 404 and "write it first with PUT" in gone.json()["detail"]
    assert (await client.delete(f"{AGENT}/memory/plan")).status_code == 404


async def test_routes_refuse_expired_too_large_and_bad_input_saying_what_to_do(
        client: httpx.AsyncClient, db: Database) -> None:
    await put(db, key="old", now=datetime.now(UTC) - timedelta(hours=1), ttl_s=60)
    expired = await client.get(f"{AGENT}/memory/old")
    assert expired.status_code == 410 and "write it again" in expired.json()["detail"]
    large = await client.put(f"{AGENT}/memory/big", json={"value": "z" * 2000})
    assert large.status_code == 413 and "the limit is 1024 bytes" in large.json()["detail"]
    bad_ttl = await client.put(f"{AGENT}/memory/k", json={"value": 1, "ttl_s": 0})
    assert bad_ttl.status_code == 422 and "ttl_s must be between 1 and" in bad_ttl.json()["detail"]
    no_value = await client.put(f"{AGENT}/memory/k", json={"ttl_s": 5})
    assert no_value.status_code == 422 and "value: Field required" in no_value.json()["detail"]
    bad_step = await client.put(f"{AGENT}/checkpoints/r1", json={"step": -1, "value": 1})
    assert bad_step.status_code == 422 and "step must be 0 or more" in bad_step.json()["detail"]
    assert (await client.get(f"{AGENT}/memory/k")).status_code == 404


async def test_conversation_and_checkpoint_routes(client: httpx.AsyncClient) -> None:
    for i, role in enumerate(["user", "assistant", "user"]):
        sent = await client.post(f"{AGENT}/conversations/c1", json={"role": role, "content": f"m{i}"})
        assert sent.status_code == 201 and sent.json() == {"conversation": "c1", "seq": i + 1}
    page = (await client.get(f"{AGENT}/conversations/c1", params={"after": 1})).json()
    assert [(m["seq"], m["role"], m["content"]) for m in page["messages"]] == [
        (2, "assistant", "m1"), (3, "user", "m2")]
    assert (await client.get(f"{AGENT}/conversations/nope")).status_code == 404
    assert (await client.get(f"{AGENT}/checkpoints/r1")).status_code == 404
    for step in (1, 2):
        saved = await client.put(f"{AGENT}/checkpoints/r1", json={"step": step, "value": {"s": step}})
        assert saved.status_code == 200 and saved.json()["step"] == step
    cp = (await client.get(f"{AGENT}/checkpoints/r1")).json()
    assert (cp["step"], cp["value"]) == (2, {"s": 2})


async def test_a_nul_character_or_a_number_past_bigint_is_the_callers_error_not_a_500(
        client: httpx.AsyncClient) -> None:
    """Found by fuzzing the running stack: Postgres stores no NUL and no number past BIGINT."""
    for answer in (await client.put(f"{AGENT}/memory/k%00", json={"value": 1}),
                   await client.post(f"{AGENT}/conversations/c%00", json={"role": "user", "content": "x"}),
                   await client.get(f"{AGENT}/checkpoints/r%00")):
        assert answer.status_code == 400, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert "NUL character" in answer.json()["detail"]
    past = await client.get(f"{AGENT}/conversations/c1", params={"after": 2**63})
    assert past.status_code == 422 and "after" in past.json()["detail"]
    step = await client.put(f"{AGENT}/checkpoints/r1", json={"step": 2**63, "value": 1})
    assert step.status_code == 422 and "step" in step.json()["detail"]
