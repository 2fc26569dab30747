"""quota's tables: GPU allocations held by admitted work, and the decision log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import Envelope
from services.kit.db import Migration, driver
from services.kit.outbox import outbox_insert, staged
from services.quota.domain import Capacity, Pool

MIGRATIONS = (
    Migration(
        1,
        "allocations and decision log",
        (
            """CREATE TABLE allocations (
                resource_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                gpus INT NOT NULL,
                admitted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                released_at TIMESTAMPTZ)""",
            "CREATE INDEX allocations_held ON allocations (team) WHERE released_at IS NULL",
            """CREATE TABLE decisions (
                id BIGSERIAL PRIMARY KEY,
                resource_id TEXT NOT NULL,
                team TEXT NOT NULL,
                admitted BOOLEAN NOT NULL,
                policy_ids JSONB NOT NULL,
                reason TEXT NOT NULL,
                decided_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        ),
    ),
    Migration(
        2,
        "audit findings in the decision log",
        ("ALTER TABLE decisions ADD COLUMN audit_findings JSONB NOT NULL DEFAULT '[]'::jsonb",),
    ),
    Migration(
        3,
        "FIFO queue per team; decision outcomes",
        (
            """CREATE TABLE queue (
                seq BIGSERIAL UNIQUE,
                job_id TEXT PRIMARY KEY,
                team TEXT NOT NULL,
                gpus INT NOT NULL,
                request JSONB NOT NULL,
                enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            "CREATE INDEX queue_team ON queue (team, seq)",
            "ALTER TABLE decisions ADD COLUMN outcome TEXT NOT NULL DEFAULT ''",
        ),
    ),
    Migration(
        4,
        "budgets and reserved cost",
        (
            """CREATE TABLE budgets (
                team TEXT PRIMARY KEY,
                amount_usd NUMERIC(14, 2) NOT NULL CHECK (amount_usd >= 0),
                spent_usd NUMERIC(14, 2) NOT NULL DEFAULT 0,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            "ALTER TABLE allocations ADD COLUMN estimate_usd NUMERIC(14, 2) NOT NULL DEFAULT 0",
        ),
    ),
    Migration(
        5,
        "budget blocks from the cost ledger",
        (
            """CREATE TABLE budget_blocks (
                team TEXT NOT NULL,
                period TEXT NOT NULL,
                budget_id TEXT NOT NULL,
                action TEXT NOT NULL,
                spent_usd NUMERIC(14, 2) NOT NULL,
                amount_usd NUMERIC(14, 2) NOT NULL,
                blocked_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (team, period))""",
        ),
    ),
    Migration(
        6,
        "GPU type of each allocation; the compute engine's capacity by type",
        (
            "ALTER TABLE allocations ADD COLUMN gpu_type TEXT",
            """CREATE TABLE engine_capacity (
                engine TEXT PRIMARY KEY,
                address TEXT NOT NULL DEFAULT '',
                pools JSONB NOT NULL,
                observed_at TIMESTAMPTZ NOT NULL,
                received_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
        ),
    ),
    Migration(
        7,
        "whether the compute engine answers",
        ("ALTER TABLE engine_capacity ADD COLUMN reachable BOOLEAN NOT NULL DEFAULT true",),
    ),
)


NODE_LOCK = "aicloud-node"


def lock_key(name: str) -> int:
    """The advisory lock key of a team (or of the node): the same everywhere it is taken, and
    computed here rather than by the server so that a batch can take its locks in a statement
    without parameters, sent together with BEGIN (``admission.py``)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def take_locks(names: Sequence[str]) -> str:
    """Statements taking the locks of ``names``, in that order (no parameters)."""
    return "; ".join(f"SELECT pg_advisory_xact_lock({lock_key(name)})" for name in names)


# The GPUs held by type (engine capacity) and in all (the local node), and the engine's latest
# capacity report; read after the node lock was taken.
CAPACITY_FACTS = """
SELECT (SELECT json_object_agg(t, n) FROM (
            SELECT coalesce(gpu_type, '') AS t, sum(gpus) AS n FROM allocations
            WHERE released_at IS NULL GROUP BY coalesce(gpu_type, '')) AS held),
       (SELECT json_build_object('engine', engine, 'pools', pools, 'reachable', reachable)
        FROM engine_capacity
        ORDER BY observed_at DESC LIMIT 1)
"""


def capacity_of(held: dict[str, Any] | None, engine: dict[str, Any] | None, *,
                node_gpus: int | None) -> Capacity | None:
    """The shared capacity from ``CAPACITY_FACTS``'s row: the engine's report when there is one,
    else the configured local node's GPUs, else None (no limit but the teams' quotas)."""
    held, engine = _json(held), _json(engine)
    held = {str(k): int(v) for k, v in (held or {}).items()}
    if engine is not None:
        pools = {p["gpu_type"]: Pool(total=int(p["total"]), largest_node=int(p["largest_node"]),
                                     simulated=bool(p.get("simulated")))
                 for p in engine["pools"]}
        return Capacity(in_use=held, pools=pools, engine=str(engine["engine"]),
                        reachable=bool(engine.get("reachable", True)))
    if node_gpus is None:
        return None
    return Capacity(in_use={"": sum(held.values())}, node_gpus=node_gpus)


def _json(value: Any) -> Any:
    """A json column as the driver gives it (text) decoded; None stays None."""
    return json.loads(value) if isinstance(value, str) else value


async def capacity(session: AsyncSession, *, node_gpus: int | None) -> Capacity | None:
    """The shared capacity, after taking the node lock (always before any team lock, so
    decisions cannot deadlock)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(NODE_LOCK)})
    held, engine = (await session.execute(text(CAPACITY_FACTS))).one()
    return capacity_of(held, engine, node_gpus=node_gpus)


async def record_capacity(session: AsyncSession, *, engine: str, address: str,
                          pools: list[dict[str, Any]], observed_at: datetime,
                          reachable: bool = True) -> bool:
    """Keep the engine's capacity report unless a newer one is kept already; True if kept.
    Every other engine's report goes: one engine runs the jobs."""
    kept = await session.execute(
        text("INSERT INTO engine_capacity (engine, address, pools, observed_at, reachable)"
             " VALUES (:e, :a, CAST(:p AS JSONB), :o, :r) ON CONFLICT (engine) DO UPDATE SET"
             " address = EXCLUDED.address, pools = EXCLUDED.pools, reachable = EXCLUDED.reachable,"
             " observed_at = EXCLUDED.observed_at, received_at = now()"
             " WHERE engine_capacity.observed_at < EXCLUDED.observed_at RETURNING engine"),
        {"e": engine, "a": address, "p": json.dumps(pools), "o": observed_at, "r": reachable})
    if kept.first() is None:
        return False
    await session.execute(text("DELETE FROM engine_capacity WHERE engine <> :e"), {"e": engine})
    return True


async def teams_waiting(session: AsyncSession) -> list[str]:
    """Teams with queued jobs, the one waiting longest first."""
    rows = await session.execute(
        text("SELECT team FROM queue GROUP BY team ORDER BY min(seq)"))
    return [row[0] for row in rows]


async def team_load(session: AsyncSession, *, team: str) -> tuple[int, int]:
    """(GPUs held, jobs queued) for ``team``, after taking the team's decision lock.

    The lock serialises decisions per team, so two concurrent requests cannot both fit the
    last GPUs; it is held until the transaction ends.
    """
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(team)})
    row = (await session.execute(
        text(
            "SELECT (SELECT coalesce(sum(gpus), 0) FROM allocations"
            "        WHERE team = :t AND released_at IS NULL),"
            "       (SELECT count(*) FROM queue WHERE team = :t)"
        ),
        {"t": team},
    )).one()
    return int(row[0]), int(row[1])


async def admit(session: AsyncSession, *, resource_id: str, team: str, gpus: int,
                estimate_usd: float, policy_ids: tuple[str, ...], reason: str,
                audit_findings: tuple[str, ...], event: Envelope, gpu_type: str | None = None) -> None:
    """Log the admission, hold the GPUs and stage ``event`` in the outbox: one statement."""
    await (await driver(session)).execute(
        "WITH logged AS (INSERT INTO decisions (resource_id, team, admitted, outcome,"
        "  policy_ids, reason, audit_findings) VALUES ($1, $2, true, 'admit', $5, $6, $7)),"
        f" staged AS ({outbox_insert(8)})"
        " INSERT INTO allocations (resource_id, team, gpus, estimate_usd, gpu_type)"
        " VALUES ($1, $2, $3, $4, $12) ON CONFLICT (resource_id) DO NOTHING",
        resource_id, team, gpus, estimate_usd, json.dumps(policy_ids), reason,
        json.dumps(audit_findings), *staged(event), gpu_type,
    )


async def hold(session: AsyncSession, *, resource_id: str, team: str, gpus: int) -> None:
    """Like ``allocate``, for resources that live on and come back: a live one grows to
    ``gpus`` (never shrinks: its previous version may still run), a released one (an endpoint
    deleted, then deployed again under its name) is held anew."""
    await session.execute(
        text(
            "INSERT INTO allocations (resource_id, team, gpus) VALUES (:r, :t, :g)"
            " ON CONFLICT (resource_id) DO UPDATE SET team = EXCLUDED.team,"
            "  gpus = CASE WHEN allocations.released_at IS NULL"
            "         THEN greatest(allocations.gpus, EXCLUDED.gpus) ELSE EXCLUDED.gpus END,"
            "  estimate_usd = CASE WHEN allocations.released_at IS NULL"
            "                 THEN allocations.estimate_usd ELSE 0 END,"
            "  admitted_at = CASE WHEN allocations.released_at IS NULL"
            "                THEN allocations.admitted_at ELSE now() END,"
            "  released_at = NULL"
        ),
        {"r": resource_id, "t": team, "g": gpus},
    )


async def set_budgets(session: AsyncSession, budgets: dict[str, float]) -> None:
    for team, amount in budgets.items():
        await session.execute(
            text(
                "INSERT INTO budgets (team, amount_usd) VALUES (:t, :a) ON CONFLICT (team)"
                " DO UPDATE SET amount_usd = EXCLUDED.amount_usd, updated_at = now()"
            ),
            {"t": team, "a": amount},
        )


async def live_resources(session: AsyncSession, *, team: str, kind: str) -> int:
    """How many resources of ``kind`` (``notebook``, ``endpoint``) the team holds now."""
    row = await session.execute(text(
        "SELECT count(*) FROM allocations WHERE team = :t AND released_at IS NULL"
        " AND starts_with(resource_id, :p)"), {"t": team, "p": f"{kind}:"})
    return int(row.scalar_one())


async def held_gpus(session: AsyncSession, *, resource_id: str) -> int | None:
    """GPUs the resource holds now (a redeploy of a live endpoint), None when it holds nothing."""
    row = await session.execute(text(
        "SELECT gpus FROM allocations WHERE resource_id = :r AND released_at IS NULL"), {"r": resource_id})
    found = row.first()
    return None if found is None else int(found[0])


async def release(session: AsyncSession, *, resource_id: str) -> None:
    await session.execute(
        text("UPDATE allocations SET released_at = now() WHERE resource_id = :r AND released_at IS NULL"),
        {"r": resource_id},
    )


async def log_decision(
    session: AsyncSession, *, resource_id: str, team: str, outcome: str,
    policy_ids: tuple[str, ...], reason: str, audit_findings: tuple[str, ...] = (),
) -> None:
    await (await driver(session)).execute(
        "INSERT INTO decisions (resource_id, team, admitted, outcome, policy_ids, reason,"
        " audit_findings) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        resource_id, team, outcome == "admit", outcome, json.dumps(policy_ids), reason,
        json.dumps(audit_findings),
    )


async def enqueue(session: AsyncSession, *, job_id: str, team: str, gpus: int,
                  request: dict[str, object]) -> int:
    """Add to the team's queue (idempotent); returns the job's position (1 = next)."""
    await session.execute(
        text(
            "INSERT INTO queue (job_id, team, gpus, request) VALUES (:j, :t, :g, CAST(:r AS JSONB))"
            " ON CONFLICT (job_id) DO NOTHING"
        ),
        {"j": job_id, "t": team, "g": gpus, "r": json.dumps(request)},
    )
    position = await session.execute(
        text(
            "SELECT count(*) FROM queue"
            " WHERE team = :t AND seq <= (SELECT seq FROM queue WHERE job_id = :j)"
        ),
        {"t": team, "j": job_id},
    )
    return int(position.scalar_one())


async def queue_head(session: AsyncSession, *, team: str) -> tuple[str, int, dict[str, object]] | None:
    row = (
        await session.execute(
            text("SELECT job_id, gpus, request FROM queue WHERE team = :t ORDER BY seq LIMIT 1"),
            {"t": team},
        )
    ).first()
    return (row.job_id, row.gpus, dict(row.request)) if row else None


async def dequeue(session: AsyncSession, *, job_id: str) -> str | None:
    """Remove a job from its queue; its team when it was queued, else None."""
    row = await session.execute(
        text("DELETE FROM queue WHERE job_id = :j RETURNING team"), {"j": job_id}
    )
    return row.scalar_one_or_none()


async def block_team(session: AsyncSession, *, team: str, period: str, budget_id: str, action: str,
                     spent_usd: Decimal, amount_usd: Decimal) -> None:
    await session.execute(
        text("INSERT INTO budget_blocks (team, period, budget_id, action, spent_usd, amount_usd)"
             " VALUES (:t, :p, :b, :a, :s, :m) ON CONFLICT (team, period) DO UPDATE SET"
             " action = EXCLUDED.action, spent_usd = EXCLUDED.spent_usd,"
             " amount_usd = EXCLUDED.amount_usd"),
        {"t": team, "p": period, "b": budget_id, "a": action, "s": spent_usd, "m": amount_usd})


async def unblock_team(session: AsyncSession, *, team: str, period: str) -> None:
    await session.execute(text("DELETE FROM budget_blocks WHERE team = :t AND period = :p"),
                          {"t": team, "p": period})


async def budget_block(session: AsyncSession, *, team: str, period: str) -> dict[str, Any] | None:
    row = (await session.execute(
        text("SELECT budget_id, action, spent_usd, amount_usd FROM budget_blocks"
             " WHERE team = :t AND period = :p"), {"t": team, "p": period})).first()
    return dict(row._mapping) if row else None


async def record_spend(session: AsyncSession, *, team: str, amount_usd: Decimal,
                       spent_usd: Decimal) -> None:
    """The ledger's view of a team's budget and spend, for pre-authorising jobs."""
    await session.execute(
        text("INSERT INTO budgets (team, amount_usd, spent_usd) VALUES (:t, :a, :s)"
             " ON CONFLICT (team) DO UPDATE SET amount_usd = EXCLUDED.amount_usd,"
             " spent_usd = EXCLUDED.spent_usd, updated_at = now()"),
        {"t": team, "a": amount_usd, "s": spent_usd})


class SqlBudgets:
    """``handlers.BudgetStore`` on one session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record_spend(self, *, team: str, amount_usd: Decimal, spent_usd: Decimal) -> None:
        await record_spend(self.session, team=team, amount_usd=amount_usd, spent_usd=spent_usd)

    async def block_team(self, *, team: str, period: str, budget_id: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None:
        await block_team(self.session, team=team, period=period, budget_id=budget_id, action=action,
                         spent_usd=spent_usd, amount_usd=amount_usd)

    async def unblock_team(self, *, team: str, period: str) -> None:
        await unblock_team(self.session, team=team, period=period)
