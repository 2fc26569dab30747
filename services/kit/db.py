"""PostgreSQL through SQLAlchemy/SQLModel on asyncpg, one schema per service, migrated on start.

Migrations are ordered SQL steps recorded in ``<schema>.schema_migrations``; they run under
an advisory lock so several replicas starting together apply each step exactly once.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = structlog.get_logger(__name__)
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


KIT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "inbox and outbox",
        (
            """CREATE TABLE inbox (
                consumer TEXT NOT NULL,
                event_id UUID NOT NULL,
                subject TEXT NOT NULL,
                processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, event_id))""",
            """CREATE TABLE outbox (
                id BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL UNIQUE,
                subject TEXT NOT NULL,
                payload BYTEA NOT NULL,
                headers JSONB NOT NULL DEFAULT '{}'::jsonb,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                published_at TIMESTAMPTZ)""",
            "CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL",
        ),
    ),
)


def async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the asyncpg driver."""
    for scheme in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


async def driver(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under ``session``, inside the session's transaction.

    For the few statements on a hot path (the inbox, the outbox, an admission decision): a
    statement through asyncpg directly costs about 130 µs of CPU on a 2-core VM, through
    SQLAlchemy about 300 µs (``bench/admission.py``). Parameters are ``$1, $2, ...``; json and
    jsonb parameters are passed as JSON text and come back decoded."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    adapted = raw.dbapi_connection
    # SQLAlchemy's asyncpg adapter sends BEGIN lazily, before its own first statement: begin
    # now, or these statements would run outside the transaction (each committed at once).
    if getattr(adapted, "_transaction", None) is None:
        start = getattr(adapted, "_start_transaction", None)
        if start is None:
            raise RuntimeError("this SQLAlchemy's asyncpg adapter has no _start_transaction: "
                               "services.kit.db.driver needs updating")
        await start()
    return raw.driver_connection


class Database:
    """An engine bound to one schema, with a session factory and a migrator."""

    def __init__(self, *, url: str, schema: str, pool_size: int = 10) -> None:
        if not SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: use lower_snake_case")
        self.schema = schema
        self.engine: AsyncEngine = create_async_engine(
            async_url(url),
            pool_size=pool_size,
            # No pre-ping: on asyncpg it costs three round trips (begin, ping, rollback) per
            # transaction, more than a whole admission decision's reads. A connection that died
            # with the server fails its one transaction instead; SQLAlchemy then discards the
            # whole pool, and the bus redelivers the event (the inbox makes that safe).
            pool_pre_ping=False,
            connect_args={"server_settings": {"search_path": f"{schema},public"}},
        )
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection outside any transaction: each statement commits on its
        own (one round trip, no BEGIN and COMMIT), for single idempotent statements."""
        async with self.engine.connect() as connection:
            raw = await connection.get_raw_connection()
            yield raw.driver_connection

    @asynccontextmanager
    async def raw_transaction(self, begin_with: str = "") -> AsyncIterator[asyncpg.Connection]:
        """An asyncpg connection in a transaction of its own (no SQLAlchemy session), for a hot
        path: committed on success, rolled back on error. ``begin_with``: statements without
        parameters (e.g. taking advisory locks) sent in the same message as BEGIN, so they
        cost no round trip of their own."""
        async with self.engine.connect() as connection:
            pg = (await connection.get_raw_connection()).driver_connection
            assert pg is not None
            await pg.execute(f"BEGIN; {begin_with}" if begin_with else "BEGIN")
            try:
                yield pg
            except BaseException:
                try:
                    await pg.execute("ROLLBACK")
                except BaseException:
                    await connection.invalidate()  # unusable: never back into the pool
                raise
            await pg.execute("COMMIT")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrate(self, migrations: Sequence[Migration] = ()) -> list[int]:
        """Apply the kit's and the service's migrations that are not applied yet."""
        applied: list[int] = []
        steps = [*KIT_MIGRATIONS, *sorted(migrations, key=lambda m: m.version)]
        async with self.engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": self.schema})
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.execute(
                text(
                    f'CREATE TABLE IF NOT EXISTS "{self.schema}".schema_migrations ('
                    " owner TEXT NOT NULL, version INT NOT NULL, description TEXT NOT NULL,"
                    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (owner, version))"
                )
            )
            rows = await conn.execute(text(f'SELECT owner, version FROM "{self.schema}".schema_migrations'))
            done = {(owner, version) for owner, version in rows}
            await conn.execute(text(f'SET LOCAL search_path TO "{self.schema}"'))
            for step in steps:
                owner = "kit" if step in KIT_MIGRATIONS else "service"
                if (owner, step.version) in done:
                    continue
                for statement in step.statements:
                    await conn.execute(text(statement))
                await conn.execute(
                    text(
                        f'INSERT INTO "{self.schema}".schema_migrations (owner, version, description)'
                        " VALUES (:o, :v, :d)"
                    ),
                    {"o": owner, "v": step.version, "d": step.description},
                )
                applied.append(step.version)
                log.info("db.migrated", schema=self.schema, owner=owner, version=step.version,
                         description=step.description)
        return applied

    async def drop_schema(self) -> None:
        """For tests: remove this schema and everything in it."""
        async with self.engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))

    async def dispose(self) -> None:
        await self.engine.dispose()
