"""Admission rules. Pure: no I/O, so every rule is unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GPU_QUOTA_POLICY = "quota.gpu-per-team"
BUDGET_POLICY = "quota.budget-pre-authorisation"


class Outcome(StrEnum):
    ADMIT = "admit"
    QUEUE = "queue"
    REJECT = "reject"


@dataclass(frozen=True)
class QuotaDecision:
    outcome: Outcome
    policy_ids: tuple[str, ...]
    reason: str


def decide_gpus(*, team: str, requested: int, in_use: int, quota: int,
                queued_ahead: int = 0, node: tuple[int, int] | None = None) -> QuotaDecision:
    """Admit when it fits the team's quota and the node, and nobody of the team waits ahead;
    queue when it will fit later; reject only what can never fit.

    ``node`` is (GPUs of the node, GPUs in use on it by every team), when capacity is finite.
    """
    ids = (GPU_QUOTA_POLICY,)
    if node is not None and requested > node[0]:
        return QuotaDecision(
            Outcome.REJECT, ids,
            f"the node has {node[0]} GPUs (simulated capacity) and this job asks for {requested}",
        )
    if node is not None and requested + in_use <= quota and requested > node[0] - node[1]:
        return QuotaDecision(
            Outcome.QUEUE, ids,
            f"queued: the node's GPUs are busy ({node[1]} of {node[0]} in use, simulated "
            f"capacity, {requested} needed); it starts when running work ends",
        )
    if requested > quota:
        return QuotaDecision(
            Outcome.REJECT, ids,
            f"team {team} asked for {requested} GPUs but its whole quota is {quota}: request at "
            f"most {quota}, or ask the platform team to raise the quota",
        )
    if requested + in_use <= quota and queued_ahead == 0:
        return QuotaDecision(Outcome.ADMIT, ids,
                             f"team {team} uses {in_use} of {quota} GPUs; {requested} more fit")
    free = max(quota - in_use, 0)
    return QuotaDecision(
        Outcome.QUEUE, ids,
        f"queued: team {team} uses {in_use} of {quota} GPUs ({free} free, {requested} needed, "
        f"{queued_ahead} job(s) ahead); it starts when running work ends",
    )


def decide_budget(*, team: str, estimate: float, amount: float | None, spent: float,
                  reserved: float) -> QuotaDecision | None:
    """Refuse a job whose worst-case cost does not fit what is left; None when it fits
    (or the team has no budget)."""
    if amount is None:
        return None
    remaining = amount - spent - reserved
    if estimate <= remaining:
        return None
    return QuotaDecision(
        Outcome.REJECT, (BUDGET_POLICY,),
        f"team {team}'s budget cannot cover this job: up to ${estimate:,.2f} at its max runtime, "
        f"but ${max(remaining, 0):,.2f} of ${amount:,.2f} is left (${spent:,.2f} spent, "
        f"${reserved:,.2f} reserved by running jobs): lower --max-runtime or --gpus, or raise "
        "the budget",
    )
