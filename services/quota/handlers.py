"""quota's handlers: decide on requests, release GPUs when work ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    BudgetThresholdCrossed,
    CancelJob,
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobTerminated,
)
from contracts.catalog import ImageAttestation, Org, Product
from guardrails.cedar import PolicyEngine
from services.kit.inbox import UnitOfWork
from services.quota import repo
from services.quota.domain import Outcome, QuotaDecision, decide_gpus

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

    def estimate(self, request: JobRequested) -> float:
        """Worst-case cost: the product's price for the job's whole allowed runtime."""
        product = self.products.get(request.product)
        if product is None:
            return 0.0
        runtime = min(request.max_runtime_s or product.max_runtime_s, product.max_runtime_s)
        return product.estimate_usd(gpus=request.gpus, runtime_s=runtime)


async def on_job_ended(event: JobCompleted | JobFailed | JobTerminated, uow: UnitOfWork, *,
                       rails: Guardrails) -> None:
    """Every terminal event releases what the job held, then the team's queue moves."""
    node = await _node(uow, rails)
    await repo.release(uow.session, resource_id=event.job_id)
    await repo.dequeue(uow.session, job_id=event.job_id)
    await _drain_queues(uow, team=event.tenant, rails=rails, node_held=node)


async def on_cancel_job(command: CancelJob, uow: UnitOfWork, *, rails: Guardrails) -> None:
    """A queued job is cancelled here (a running one by the provisioner)."""
    node = await _node(uow, rails)
    if await repo.dequeue(uow.session, job_id=command.job_id) is None:
        return
    await uow.outbox.add(uow.session, JobTerminated(
        job_id=command.job_id, duration_s=0, reason="cancelled", **event_fields(command)))
    await _drain_queues(uow, team=command.tenant, rails=rails, node_held=node)


async def _node(uow: UnitOfWork, rails: Guardrails) -> tuple[int, int] | None:
    if rails.node_gpus is None:
        return None
    return rails.node_gpus, await repo.node_load(uow.session)


async def _drain_queues(uow: UnitOfWork, *, team: str, rails: Guardrails,
                        node_held: tuple[int, int] | None) -> None:
    """After capacity frees: the team's own queue, or with a shared node every team's queue,
    the team waiting longest first."""
    teams = [team] if node_held is None else await repo.teams_waiting(uow.session)
    for waiting in teams:
        await admit_from_queue(uow, team=waiting, rails=rails)


async def admit_from_queue(uow: UnitOfWork, *, team: str, rails: Guardrails) -> int:
    """Admit queued jobs in order while the head fits; the head is never overtaken.
    Returns how many were admitted."""
    in_use, _ = await repo.team_load(uow.session, team=team)
    admitted = 0
    while (head := await repo.queue_head(uow.session, team=team)) is not None:
        job_id, gpus, stored = head
        node = None
        if rails.node_gpus is not None:
            node = (rails.node_gpus, await repo.node_load(uow.session))
        decision = decide_gpus(team=team, requested=gpus, in_use=in_use, quota=rails.quota(team),
                               node=node)
        if decision.outcome is not Outcome.ADMIT:
            return admitted
        await repo.dequeue(uow.session, job_id=job_id)
        request = JobRequested.model_validate(stored)
        await _admit(uow, request, decision, rails, logged_reason=f"admitted from the queue: "
                     f"{decision.reason}")
        in_use += gpus
        admitted += 1
    return admitted


async def _admit(uow: UnitOfWork, request: JobRequested, decision: QuotaDecision,
                 rails: Guardrails, *, audit_findings: tuple[str, ...] = (),
                 logged_reason: str | None = None) -> None:
    """Log the admission, hold the GPUs and stage ``jobs.admitted``."""
    await repo.admit(
        uow.session, resource_id=request.job_id, team=request.tenant, gpus=request.gpus,
        estimate_usd=rails.estimate(request), policy_ids=decision.policy_ids,
        reason=logged_reason or decision.reason, audit_findings=audit_findings,
        event=JobAdmitted(
            job_id=request.job_id, request=request, policy_ids=list(decision.policy_ids),
            reason=decision.reason, product=rails.products.get(request.product),
            **event_fields(request)))


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
