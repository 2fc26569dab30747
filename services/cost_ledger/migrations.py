"""cost-ledger's schema, version by version (a migration is never edited once released)."""

from __future__ import annotations

from services.kit.db import Migration

MIGRATIONS = (
    Migration(
        1,
        "metered usage",
        (
            """CREATE TABLE usage_entries (
                event_id UUID PRIMARY KEY, team TEXT NOT NULL, kind TEXT NOT NULL,
                resource_id TEXT NOT NULL, gpu_type TEXT, gpu_seconds DOUBLE PRECISION NOT NULL,
                duration_s DOUBLE PRECISION NOT NULL, started_at TIMESTAMPTZ NOT NULL,
                ended_at TIMESTAMPTZ NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            """CREATE TABLE inference_entries (
                event_id UUID PRIMARY KEY, team TEXT NOT NULL, model TEXT NOT NULL,
                target TEXT NOT NULL, tokens_in INT NOT NULL, tokens_out INT NOT NULL,
                status TEXT NOT NULL, occurred_at TIMESTAMPTZ NOT NULL)""",
        ),
    ),
    Migration(2, "price class of metered usage",
              ("ALTER TABLE usage_entries ADD COLUMN price_class TEXT NOT NULL DEFAULT 'on-demand'",)),
    Migration(
        3,
        "priced ledger lines, hourly rollup, budgets (replacing the unpriced metering tables)",
        (
            "DROP TABLE usage_entries",
            "DROP TABLE inference_entries",
            """CREATE TABLE ledger_entries (
                entry_id BIGSERIAL PRIMARY KEY,
                event_id UUID NOT NULL,
                line INT NOT NULL,
                team TEXT NOT NULL,
                project TEXT NOT NULL DEFAULT '',
                user_id TEXT NOT NULL DEFAULT '',
                kind TEXT NOT NULL,
                model TEXT NOT NULL DEFAULT '',
                gpu_type TEXT NOT NULL DEFAULT '',
                resource_id TEXT NOT NULL DEFAULT '',
                hour TIMESTAMPTZ NOT NULL,
                quantity NUMERIC NOT NULL,
                unit TEXT NOT NULL,
                usd NUMERIC(24, 10) NOT NULL,
                flag TEXT,
                reverses BIGINT REFERENCES ledger_entries (entry_id),
                recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                UNIQUE (event_id, line))""",
            "CREATE INDEX ledger_entries_team_hour ON ledger_entries (team, hour)",
            """CREATE TABLE spend_hourly (
                team TEXT NOT NULL, project TEXT NOT NULL, user_id TEXT NOT NULL,
                kind TEXT NOT NULL, model TEXT NOT NULL, gpu_type TEXT NOT NULL,
                resource_id TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                lines BIGINT NOT NULL,
                PRIMARY KEY (team, hour, kind, project, user_id, model, gpu_type, resource_id))""",
            "CREATE INDEX spend_hourly_hour ON spend_hourly (hour)",
            """CREATE TABLE budgets (
                team TEXT PRIMARY KEY,
                amount_usd NUMERIC(14, 2) NOT NULL CHECK (amount_usd > 0),
                thresholds INT[] NOT NULL,
                action TEXT NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            """CREATE TABLE budget_alerts (
                team TEXT NOT NULL, period TEXT NOT NULL, threshold INT NOT NULL,
                spent_usd NUMERIC(24, 10) NOT NULL, amount_usd NUMERIC(14, 2) NOT NULL,
                action TEXT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now(),
                PRIMARY KEY (team, period, threshold))""",
        ),
    ),
    Migration(
        4,
        "daily rollup without user and resource, for fast team x kind x day queries",
        (
            """CREATE TABLE spend_daily (
                team TEXT NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL,
                model TEXT NOT NULL, gpu_type TEXT NOT NULL, day DATE NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                PRIMARY KEY (day, team, kind, project, model, gpu_type))""",
            """INSERT INTO spend_daily SELECT team, project, kind, model, gpu_type,
                CAST(hour AT TIME ZONE 'UTC' AS date), sum(usd), sum(gpu_seconds) FROM spend_hourly
                GROUP BY 1, 2, 3, 4, 5, 6""",
        ),
    ),
    Migration(
        5,
        "hourly rollup without user and resource (one row per resource-hour made it as big as "
        "the lines); those queries read the lines",
        (
            "DROP TABLE spend_hourly",
            """CREATE TABLE spend_hourly (
                team TEXT NOT NULL, project TEXT NOT NULL, kind TEXT NOT NULL, model TEXT NOT NULL,
                gpu_type TEXT NOT NULL, hour TIMESTAMPTZ NOT NULL, usd NUMERIC(24, 10) NOT NULL,
                gpu_seconds NUMERIC NOT NULL DEFAULT 0, lines BIGINT NOT NULL,
                PRIMARY KEY (hour, team, kind, project, model, gpu_type))""",
            """INSERT INTO spend_hourly SELECT team, project, kind, model, gpu_type, hour, sum(usd),
                sum(CASE WHEN unit = 'gpu_seconds' THEN quantity ELSE 0 END), count(*)
                FROM ledger_entries GROUP BY 1, 2, 3, 4, 5, 6""",
        ),
    ),
    Migration(
        6,
        "team x kind x day rollup: the bill's and the dashboard's question, a few rows per day",
        (
            """CREATE TABLE spend_team_daily (
                day DATE NOT NULL, team TEXT NOT NULL, kind TEXT NOT NULL,
                usd NUMERIC(24, 10) NOT NULL, gpu_seconds NUMERIC NOT NULL DEFAULT 0,
                PRIMARY KEY (day, team, kind))""",
            """INSERT INTO spend_team_daily SELECT day, team, kind, sum(usd), sum(gpu_seconds)
                FROM spend_daily GROUP BY 1, 2, 3""",
        ),
    ),
)
