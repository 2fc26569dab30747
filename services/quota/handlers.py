"""quota's handlers: decide on requests, release GPUs when work ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import structlog

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    BudgetThresholdCrossed,
    CancelJob,
    ClusterCapacityChanged,
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobRequested,
    JobTerminated,
)
from contracts.catalog import ImageAttestation, Org, Product
from guardrails.cedar import PolicyEngine
from services.kit.inbox import UnitOfWork
from services.quota import repo
from services.quota.domain import CAPACITY_POLICY, Capacity, Outcome, QuotaDecision, decide_gpus

log = structlog.get_logger(__name__)
SOURCE = "quota"
BUDGET_EXHAUSTED_POLICY = "quota.budget-exhausted"


@dataclass(frozen=True)
class Guardrails:
    """What quota decides with: policies, the catalog data, and GPU quotas."""

    policies: PolicyEngine
    org: Org
    products: dict[str, Product]
    quota_for: dict[str, int]
    default_quota: int
    backend: str = "local"
    node_gpus: int | None = None
    attestations: Mapping[str, ImageAttestation] = field(default_factory=dict)  # by digest

    def quota(self, team: str) -> int:
        return self.quota_for.get(team, self.default_quota)

    def gpu_type(self, request: JobRequested, shared: Capacity | None) -> str | None:
        """The GPU type the job gets (see ``Capacity.resolve``); None without GPUs."""
        if not request.gpus:
            return None
        product = self.products.get(request.product)
        types = product.gpu_types if product is not None else ()
        if shared is None:
            return request.gpu_type or (types[0] if types else None)
        return shared.resolve(request.gpu_type, types)

    def capacity_for(self, request: JobRequested, shared: Capacity | None) -> Capacity | None:
        """The shared capacity the job draws on: none when its product is bound to another
        engine than the one that reported (``engine: local`` where the platform runs Ray)."""
        product = self.products.get(request.product)
        if shared is None or shared.pools is None or product is None or product.engine is None:
            return shared
        return shared if product.engine == shared.engine else None

    def estimate(self, request: JobRequested) -> float:
        """Worst-case cost: the product's price for the job's whole allowed runtime."""
        product = self.products.get(request.product)
        if product is None:
            return 0.0
        runtime = min(request.max_runtime_s or product.max_runtime_s, product.max_runtime_s)
        return product.estimate_usd(gpus=request.gpus, runtime_s=runtime)


async def on_job_ended(event: JobCompleted | JobFailed | JobTerminated, uow: UnitOfWork, *,
                       rails: Guardrails) -> None:
    """Every terminal event releases what the job held, then the queues move."""
    shared = await repo.capacity(uow.session, node_gpus=rails.node_gpus)
    await repo.release(uow.session, resource_id=event.job_id)
    await repo.dequeue(uow.session, job_id=event.job_id)
    await _drain_queues(uow, team=event.tenant, rails=rails, shared=shared is not None)


async def on_cancel_job(command: CancelJob, uow: UnitOfWork, *, rails: Guardrails) -> None:
    """A queued job is cancelled here (a running one by the provisioner)."""
    shared = await repo.capacity(uow.session, node_gpus=rails.node_gpus)
    if await repo.dequeue(uow.session, job_id=command.job_id) is None:
        return
    await uow.outbox.add(uow.session, JobTerminated(
        job_id=command.job_id, duration_s=0, reason="cancelled", **event_fields(command)))
    await _drain_queues(uow, team=command.tenant, rails=rails, shared=shared is not None)


async def on_capacity_changed(event: ClusterCapacityChanged, uow: UnitOfWork, *,
                              rails: Guardrails) -> None:
    """The engine's GPUs by type: kept (unless a newer report is), and with more of them the
    queued jobs that now fit are admitted."""
    await repo.capacity(uow.session, node_gpus=rails.node_gpus)  # the node lock first
    kept = await repo.record_capacity(
        uow.session, engine=event.engine, address=event.address,
        pools=[pool.model_dump(mode="json") for pool in event.pools], observed_at=event.observed_at,
        reachable=event.reachable)
    if kept and event.reachable:
        log.info("quota.capacity", engine=event.engine,
                 pools={p.gpu_type: f"{p.total}/{p.largest_node}" for p in event.pools})
        await _drain_queues(uow, team="", rails=rails, shared=True)


async def _drain_queues(uow: UnitOfWork, *, team: str, rails: Guardrails, shared: bool) -> None:
    """After capacity frees: the team's own queue, or with shared capacity (the engine's, or a
    finite node) every team's queue, the team waiting longest first."""
    teams = await repo.teams_waiting(uow.session) if shared else [team]
    for waiting in teams:
        await admit_from_queue(uow, team=waiting, rails=rails)


async def admit_from_queue(uow: UnitOfWork, *, team: str, rails: Guardrails) -> int:
    """Admit queued jobs in order while the head fits; the head is never overtaken.
    Returns how many were admitted."""
    shared = await repo.capacity(uow.session, node_gpus=rails.node_gpus)  # node lock, then team's
    in_use, _ = await repo.team_load(uow.session, team=team)
    admitted = 0
    while (head := await repo.queue_head(uow.session, team=team)) is not None:
        job_id, gpus, stored = head
        request = JobRequested.model_validate(stored)
        mine = rails.capacity_for(request, shared)
        gpu_type = rails.gpu_type(request, mine)
        decision = decide_gpus(team=team, requested=gpus, in_use=in_use, quota=rails.quota(team),
                               capacity=mine, gpu_type=gpu_type)
        if decision.outcome is Outcome.REJECT and decision.policy_ids == (CAPACITY_POLICY,):
            # the engine no longer has such nodes at all: refused now rather than waiting forever
            await repo.dequeue(uow.session, job_id=job_id)
            await repo.log_decision(uow.session, resource_id=job_id, team=team, outcome="reject",
                                    policy_ids=decision.policy_ids, reason=decision.reason)
            await uow.outbox.add(uow.session, JobRejected(
                job_id=job_id, policy_ids=list(decision.policy_ids), reason=decision.reason,
                **event_fields(request)))
            continue
        if decision.outcome is not Outcome.ADMIT:
            return admitted
        await repo.dequeue(uow.session, job_id=job_id)
        await _admit(uow, request, decision, rails, gpu_type=gpu_type,
                     logged_reason=f"admitted from the queue: {decision.reason}")
        in_use += gpus
        if mine is not None:
            mine.take(gpus, gpu_type)
        admitted += 1
    return admitted


async def _admit(uow: UnitOfWork, request: JobRequested, decision: QuotaDecision,
                 rails: Guardrails, *, gpu_type: str | None, audit_findings: tuple[str, ...] = (),
                 logged_reason: str | None = None) -> None:
    """Log the admission, hold the GPUs (of their type) and stage ``jobs.admitted``."""
    await repo.admit(
        uow.session, resource_id=request.job_id, team=request.tenant, gpus=request.gpus,
        estimate_usd=rails.estimate(request), policy_ids=decision.policy_ids,
        reason=logged_reason or decision.reason, audit_findings=audit_findings,
        gpu_type=gpu_type if request.gpus else None,
        event=admitted_event(request, decision, rails, gpu_type=gpu_type))


def admitted_event(request: JobRequested, decision: QuotaDecision, rails: Guardrails, *,
                   gpu_type: str | None) -> JobAdmitted:
    return JobAdmitted(
        job_id=request.job_id, request=request, policy_ids=list(decision.policy_ids),
        reason=decision.reason, product=rails.products.get(request.product),
        gpu_type=gpu_type if request.gpus else None, **event_fields(request))


class BudgetStore(Protocol):
    """The ledger's budgets as quota keeps them: spend to pre-authorise against, and blocks."""

    async def record_spend(self, *, team: str, amount_usd: Decimal, spent_usd: Decimal) -> None: ...
    async def block_team(self, *, team: str, period: str, budget_id: str, action: str,
                         spent_usd: Decimal, amount_usd: Decimal) -> None: ...
    async def unblock_team(self, *, team: str, period: str) -> None: ...


async def on_budget_exhausted(event: BudgetExhausted, *, budgets: BudgetStore) -> None:
    """``block`` and ``stop`` refuse the team's new work for the rest of the period."""
    await budgets.record_spend(team=event.tenant, amount_usd=event.amount_usd,
                               spent_usd=event.spent_usd)
    if event.action in ("block", "stop"):
        await budgets.block_team(team=event.tenant, period=event.period, budget_id=event.budget_id,
                                 action=event.action, spent_usd=event.spent_usd,
                                 amount_usd=event.amount_usd)


async def on_budget_changed(event: BudgetChanged | BudgetThresholdCrossed, *,
                            budgets: BudgetStore) -> None:
    """Keep the ledger's budget and spend; a budget that now covers the spend lifts a block."""
    await budgets.record_spend(team=event.tenant, amount_usd=event.amount_usd,
                               spent_usd=event.spent_usd)
    if isinstance(event, BudgetChanged) and (event.spent_usd < event.amount_usd
                                             or event.action == "notify"):
        await budgets.unblock_team(team=event.tenant, period=event.period)


def budget_blocked(team: str, block: dict[str, Any]) -> QuotaDecision:
    return QuotaDecision(
        Outcome.REJECT, (BUDGET_EXHAUSTED_POLICY,),
        f"team {team}'s budget '{block['budget_id']}' is exhausted for this month "
        f"(${block['spent_usd']:,.2f} of ${block['amount_usd']:,.2f} spent; action: "
        f"{block['action']}): new work is refused until the budget is raised "
        "(aicloud budgets set) or the month ends")


def current_period() -> str:
    now = datetime.now(UTC)
    return f"{now.year:04d}-{now.month:02d}"


def event_fields(event: JobRequested | CancelJob) -> dict[str, str]:
    return {"tenant": event.tenant, "correlation_id": event.job_id, "source": SOURCE}
