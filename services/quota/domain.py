"""Admission rules. Pure: no I/O, so every rule is unit-tested directly."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

GPU_QUOTA_POLICY = "quota.gpu-per-team"
BUDGET_POLICY = "quota.budget-pre-authorisation"
CAPACITY_POLICY = "quota.cluster-capacity"
PRODUCT_POLICY = "quota.product-limits"


class Outcome(StrEnum):
    ADMIT = "admit"
    QUEUE = "queue"
    REJECT = "reject"


@dataclass(frozen=True)
class QuotaDecision:
    outcome: Outcome
    policy_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class Pool:
    """GPUs of one type on the compute engine (from its latest capacity report)."""

    total: int  # on nodes that are alive
    largest_node: int  # the biggest node of the type, alive or not
    simulated: bool = False


@dataclass
class Capacity:
    """The GPUs every team's work shares, for a run of decisions (each admission takes its
    GPUs from it): either the compute engine's pools by type, reported by the provisioner, or
    the one local node's configured ``node_gpus``. GPUs in use are quota's own reservations."""

    in_use: dict[str, int]  # by GPU type (engine) or under "" (the local node)
    pools: dict[str, Pool] | None = None
    node_gpus: int | None = None
    engine: str = "local"
    reachable: bool = True  # False: the engine stopped answering; GPU jobs wait queued

    def resolve(self, gpu_type: str | None, product_types: tuple[str, ...]) -> str | None:
        """The GPU type a job gets: the one it asked for, else the first of its product's that
        the engine offers, else the product's first."""
        if gpu_type:
            return gpu_type
        offered = [t for t in product_types if self.pools and t in self.pools]
        choices = offered or list(product_types)
        return choices[0] if choices else None

    def never_fits(self, requested: int, gpu_type: str | None) -> str | None:
        if self.pools is not None:
            pool = self.pools.get(gpu_type or "")
            if pool is None:
                return (f"no node of the {self.engine} cluster offers {gpu_type or 'untyped'} GPUs; "
                        f"it has {self.describe()}: ask for one of those with --gpu-type")
            if requested > pool.largest_node:
                return (f"the largest {gpu_type} node of the {self.engine} cluster has "
                        f"{pool.largest_node} GPUs{_simulated(pool.simulated)} and a job runs on one "
                        f"node, but this job asks for {requested}: ask for at most {pool.largest_node}")
            return None
        if self.node_gpus is not None and requested > self.node_gpus:
            return (f"the node has {self.node_gpus} GPUs (simulated capacity) and this job asks "
                    f"for {requested}")
        return None

    def busy(self, requested: int, gpu_type: str | None) -> str | None:
        """Why the job must wait for capacity, or None when its GPUs are free now."""
        if self.pools is not None:
            pool, used = self.pools[gpu_type or ""], self.in_use.get(gpu_type or "", 0)
            if requested <= pool.total - used:
                return None
            if pool.total == 0:
                return (f"queued: no {gpu_type} node of the {self.engine} cluster is up; it starts "
                        "when one joins")
            return (f"queued: the cluster's {gpu_type} GPUs are busy ({used} of {pool.total} in use"
                    f"{_simulated(pool.simulated)}, {requested} needed); it starts when running "
                    "work ends")
        if self.node_gpus is None:
            return None
        used = self.in_use.get("", 0)
        if requested <= self.node_gpus - used:
            return None
        return (f"queued: the node's GPUs are busy ({used} of {self.node_gpus} in use, simulated "
                f"capacity, {requested} needed); it starts when running work ends")

    def unreachable(self) -> str | None:
        """Why every job on the engine waits (with GPUs or not), while it does not answer."""
        if self.pools is None or self.reachable:
            return None
        return (f"queued: the {self.engine} cluster does not answer; it starts when the cluster "
                "is back (aicloud cluster)")

    def take(self, gpus: int, gpu_type: str | None) -> None:
        key = (gpu_type or "") if self.pools is not None else ""
        self.in_use[key] = self.in_use.get(key, 0) + gpus

    def key(self, gpu_type: str | None) -> str | None:
        """The GPU type an allocation is recorded under (None: it counts on the local node)."""
        return gpu_type if self.pools is not None else None

    def describe(self) -> str:
        if not self.pools:
            return "no GPUs"
        return ", ".join(f"{t} ({p.total} on nodes up, at most {p.largest_node} per node)"
                         for t, p in sorted(self.pools.items()))


def _simulated(simulated: bool) -> str:
    return ", simulated" if simulated else ""


def decide_gpus(*, team: str, requested: int, in_use: int, quota: int,
                queued_ahead: int = 0, capacity: Capacity | None = None,
                gpu_type: str | None = None) -> QuotaDecision:
    """Admit when it fits the team's quota and the shared capacity, and nobody of the team
    waits ahead; queue when it will fit later; reject only what can never fit.

    ``capacity`` is the GPUs shared by every team (the engine's by type, or the local node's),
    when finite; ``gpu_type`` the type the job gets (``Capacity.resolve``).
    """
    ids = (GPU_QUOTA_POLICY,)
    shared = capacity if capacity is not None and requested else None
    if shared is not None and (never := shared.never_fits(requested, gpu_type)):
        return QuotaDecision(Outcome.REJECT, (CAPACITY_POLICY,), never)
    if requested > quota:
        return QuotaDecision(
            Outcome.REJECT, ids,
            f"team {team} asked for {requested} GPUs but its whole quota is {quota}: request at "
            f"most {quota}, or ask the platform team to raise the quota",
        )
    busy = capacity.unreachable() if capacity is not None else None
    if busy is None and shared is not None:
        busy = shared.busy(requested, gpu_type)
    fits_team = requested + in_use <= quota
    if fits_team and busy is not None:
        return QuotaDecision(Outcome.QUEUE, (CAPACITY_POLICY,), busy)
    if fits_team and queued_ahead == 0:
        needs = f"this job's {requested} fit" if requested else "this job needs none"
        return QuotaDecision(Outcome.ADMIT, ids, f"team {team} uses {in_use} of {quota} GPUs; {needs}")
    free = max(quota - in_use, 0)
    return QuotaDecision(
        Outcome.QUEUE, ids,
        f"queued: team {team} uses {in_use} of {quota} GPUs ({free} free, {requested} needed, "
        f"{queued_ahead} job(s) ahead); it starts when running work ends",
    )


def decide_gpu_type(*, product: str, product_types: tuple[str, ...], requested: int,
                    gpu_type: str | None) -> QuotaDecision | None:
    """Refuse a GPU type the product does not offer; None when it is one of its types."""
    if gpu_type is None or not requested or gpu_type in product_types:
        return None
    offered = ", ".join(product_types) or "none"
    return QuotaDecision(
        Outcome.REJECT, (PRODUCT_POLICY,),
        f"product {product} offers GPU types {offered}, not {gpu_type}: pick one of those with "
        "--gpu-type (aicloud catalog list shows every product's types)")


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
