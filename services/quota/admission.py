"""Job requests decided a fetch at a time: four round trips per batch, not several per request.

Per batch, in one transaction: BEGIN together with the decision locks of every team in the
fetch (the shared capacity's first, then the teams in name order; other decisions take one
team's lock, after the capacity's), one statement writing the inbox rows and reading those teams' facts, the
decisions in arrival order in Python (each one seeing the GPUs, budget and queue places the
earlier ones took), then one statement writing every decision, allocation, queue entry and
outgoing event, and COMMIT. A request's trace goes on: each decision runs in a span under
the request's own trace context, and its outgoing event carries it.

A batch that fails is decided again one request at a time (each a batch of its own), so one
request that cannot be decided (a bug, a constraint) never holds up the others; only it is
retried, and dead-lettered after the bus's max deliveries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from contracts import Envelope, JobQueued, JobRejected, JobRequested
from guardrails.cedar import PolicyDecision
from services.kit.db import Database
from services.kit.outbox import Outbox, outbox_insert_many, staged
from services.kit.subscription import Delivery, PartialFailure
from services.kit.tracing import extract_context
from services.quota import handlers, repo
from services.quota.domain import (
    Capacity,
    Outcome,
    QuotaDecision,
    decide_budget,
    decide_gpu_type,
    decide_gpus,
)
from services.quota.handlers import Guardrails, budget_blocked

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("aicloud.quota")

# The inbox rows of the batch and its teams' facts, read after the locks were taken (by an
# earlier statement, so this one's snapshot has what the previous holder committed).
_CLAIM_AND_FACTS = f"""
WITH fresh AS (
    INSERT INTO inbox (consumer, event_id, subject)
    SELECT $1, e, $3 FROM unnest($2::uuid[]) AS e
    ON CONFLICT DO NOTHING RETURNING event_id
)
SELECT t.team,
       (SELECT coalesce(sum(gpus), 0) FROM allocations a
        WHERE a.team = t.team AND a.released_at IS NULL),
       (SELECT coalesce(sum(estimate_usd), 0) FROM allocations a
        WHERE a.team = t.team AND a.released_at IS NULL),
       (SELECT count(*) FROM queue q WHERE q.team = t.team),
       (SELECT amount_usd FROM budgets b WHERE b.team = t.team),
       (SELECT coalesce(spent_usd, 0) FROM budgets b WHERE b.team = t.team),
       (SELECT json_build_object('budget_id', budget_id, 'action', action,
               'spent_usd', spent_usd, 'amount_usd', amount_usd)
        FROM budget_blocks k WHERE k.team = t.team AND k.period = $5),
       (SELECT array_agg(event_id) FROM fresh),
       capacity.*
FROM unnest($4::text[]) AS t(team), ({repo.CAPACITY_FACTS}) AS capacity
"""

_WRITE = f"""
WITH logged AS (
    INSERT INTO decisions (resource_id, team, admitted, outcome, policy_ids, reason,
                           audit_findings)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::jsonb[],
                         $6::text[], $7::jsonb[])
), held AS (
    INSERT INTO allocations (resource_id, team, gpus, estimate_usd, gpu_type)
    SELECT * FROM unnest($8::text[], $9::text[], $10::int[], $11::numeric[], $12::text[])
    ON CONFLICT (resource_id) DO NOTHING
), queued AS (
    INSERT INTO queue (job_id, team, gpus, request)
    SELECT j, t, g, r FROM unnest($13::text[], $14::text[], $15::int[], $16::jsonb[])
        WITH ORDINALITY AS u(j, t, g, r, i) ORDER BY i
    ON CONFLICT (job_id) DO NOTHING
)
{outbox_insert_many(17)}
"""


@dataclass
class Facts:
    in_use: int
    reserved: float
    queued: int
    budget: float | None
    spent: float
    block: dict[str, Any] | None


def _columns(count: int) -> tuple[list[Any], ...]:
    return tuple([] for _ in range(count))


@dataclass
class Writes:
    """Everything a batch's decisions write, column by column (as ``_WRITE`` takes it)."""

    decisions: tuple[list[Any], ...] = field(default_factory=lambda: _columns(7))
    allocations: tuple[list[Any], ...] = field(default_factory=lambda: _columns(5))
    queue: tuple[list[Any], ...] = field(default_factory=lambda: _columns(4))
    outbox: tuple[list[Any], ...] = field(default_factory=lambda: _columns(4))

    def add(self, table: tuple[list[Any], ...], *row: Any) -> None:
        for column, value in zip(table, row, strict=True):
            column.append(value)

    def stage(self, event: Envelope) -> None:
        self.add(self.outbox, *staged(event))

    def parameters(self) -> list[Any]:
        return [column for table in (self.decisions, self.allocations, self.queue, self.outbox)
                for column in table]


class JobAdmission:
    """The batch handler for ``jobs.requested`` (``Service.consume_batch(deliveries=True)``)."""

    def __init__(self, db: Database, outbox: Outbox, rails: Guardrails) -> None:
        self._db, self._outbox, self._rails = db, outbox, rails

    async def __call__(self, batch: list[tuple[JobRequested, Delivery]]) -> dict[int, str]:
        try:
            writes = await self._decide_batch(batch)
        except Exception as exc:
            log.warning("admission.batch_failed", size=len(batch), error=f"{type(exc).__name__}: {exc}")
            await self._one_by_one(batch)
            self._outbox.wake()
            return {}
        # The decisions go out now, not at the relay's next turn (it is the safety net).
        self._outbox.publish_soon(list(zip(*writes.outbox, strict=True)))
        return {}

    async def _decide_batch(self, batch: list[tuple[JobRequested, Delivery]]) -> Writes:
        """Decide and commit in four round trips: BEGIN with the locks, the inbox rows with the
        facts, the writes, COMMIT. Returns what was written (nothing for redeliveries)."""
        rails = self._rails
        # Cedar first, for the whole batch in one call, and before any lock is held.
        verdicts = dict(zip((event.event_id for event, _ in batch), rails.policies.evaluate_jobs(
            [event for event, _ in batch], org=rails.org, products=rails.products,
            backend=rails.backend, attestations=rails.attestations), strict=True))
        teams = sorted({event.tenant for event, _ in batch})
        locks = [repo.NODE_LOCK, *teams]
        writes = Writes()
        async with self._db.raw_transaction(begin_with=repo.take_locks(locks)) as pg:
            rows = await pg.fetch(_CLAIM_AND_FACTS, batch[0][1].consumer,
                                  [event.event_id for event, _ in batch], batch[0][1].subject,
                                  teams, handlers.current_period())
            fresh = set(rows[0][7] or ())
            if not fresh:
                return writes  # every request was decided before (a redelivery)
            facts = {row[0]: _facts(row) for row in rows}
            shared = repo.capacity_of(rows[0][8], rows[0][9], node_gpus=rails.node_gpus)
            for event, delivery in batch:
                if event.event_id not in fresh:
                    continue
                fresh.discard(event.event_id)  # the same event twice in one fetch: once
                with tracer.start_as_current_span(
                        f"{delivery.subject} process", context=extract_context(delivery.headers),
                        kind=SpanKind.CONSUMER, attributes={"aicloud.tenant": event.tenant,
                                                            "messaging.message.id": str(event.event_id)}):
                    self._decide(event, verdicts[event.event_id], facts[event.tenant], shared,
                                 writes)
            await pg.execute(_WRITE, *writes.parameters())
        return writes

    def _decide(self, event: JobRequested, verdict: PolicyDecision, facts: Facts,
                shared: Capacity | None, writes: Writes) -> None:
        """Decide one request (its policies' ``verdict`` given) against ``facts`` and the shared
        capacity, both updated for the next request."""
        rails = self._rails
        shared = rails.capacity_for(event, shared)
        gpu_type = rails.gpu_type(event, shared)
        product = rails.products.get(event.product)
        if not verdict.admitted:
            # what could never run anyway says so too (16 GPUs need approval *and* a bigger node)
            never = shared.never_fits(event.gpus, gpu_type) if shared is not None and event.gpus else None
            decision = QuotaDecision(Outcome.REJECT, verdict.policy_ids,
                                     verdict.reason + (f"; besides, {never}" if never else ""))
        elif facts.block is not None:
            decision = budget_blocked(event.tenant, facts.block)
        else:
            estimate = rails.estimate(event)
            quota = decide_gpu_type(
                product=event.product, product_types=product.gpu_types if product else (),
                requested=event.gpus, gpu_type=event.gpu_type,
            ) or decide_budget(
                team=event.tenant, estimate=estimate, amount=facts.budget, spent=facts.spent,
                reserved=facts.reserved,
            ) or decide_gpus(
                team=event.tenant, requested=event.gpus, in_use=facts.in_use,
                quota=rails.quota(event.tenant), queued_ahead=facts.queued, capacity=shared,
                gpu_type=gpu_type)
            decision = QuotaDecision(quota.outcome, verdict.policy_ids + quota.policy_ids,
                                     quota.reason)
        common = handlers.event_fields(event)
        writes.add(writes.decisions, event.job_id, event.tenant, decision.outcome is Outcome.ADMIT,
                   str(decision.outcome), json.dumps(decision.policy_ids), decision.reason,
                   json.dumps(verdict.audit_findings))
        if decision.outcome is Outcome.ADMIT:
            estimate = rails.estimate(event)
            writes.add(writes.allocations, event.job_id, event.tenant, event.gpus, estimate,
                       shared.key(gpu_type) if shared is not None and event.gpus else None)
            writes.stage(handlers.admitted_event(event, decision, rails, gpu_type=gpu_type))
            facts.in_use += event.gpus
            facts.reserved += estimate
            if shared is not None:
                shared.take(event.gpus, gpu_type)
            return
        if decision.outcome is Outcome.QUEUE:
            facts.queued += 1
            writes.add(writes.queue, event.job_id, event.tenant, event.gpus,
                       event.model_dump_json())
            writes.stage(JobQueued(job_id=event.job_id, position=facts.queued,
                                   reason=decision.reason, **common))
        else:
            writes.stage(JobRejected(job_id=event.job_id, policy_ids=list(decision.policy_ids),
                                     reason=decision.reason, **common))

    async def _one_by_one(self, batch: list[tuple[JobRequested, Delivery]]) -> None:
        """Each request as a batch of its own; raises PartialFailure naming those that failed
        again (the bus retries only them)."""
        failed: dict[int, Exception] = {}
        for i, item in enumerate(batch):
            try:
                await self._decide_batch([item])
            except Exception as exc:
                failed[i] = exc
        if failed:
            raise PartialFailure(failed)


def _facts(row: Any) -> Facts:
    block = row[6]
    if block is not None:
        block = {**block, "spent_usd": float(block["spent_usd"]),
                 "amount_usd": float(block["amount_usd"])}
    return Facts(in_use=int(row[1]), reserved=float(row[2]), queued=int(row[3]),
                 budget=None if row[4] is None else float(row[4]), spent=float(row[5] or 0),
                 block=block)
