"""quota's decisions on the long-lived workloads: endpoints and notebooks.

Both are checked against the product's GPU range, the team's budget block and its GPU quota
(an endpoint holds ``gpus x max_replicas``: what autoscaling may reach). Unlike jobs they are
never queued — a developer waiting at a notebook prompt wants a clear "no" and the reason.
What they hold is released when the endpoint is deleted (or failed with nothing serving) and
when the notebook stops; a redeploy of a live endpoint holds nothing twice.
"""

from __future__ import annotations

from contracts import (
    EndpointAdmitted,
    EndpointDeleted,
    EndpointFailed,
    EndpointRejected,
    EndpointRequested,
    NotebookAdmitted,
    NotebookRejected,
    NotebookRequested,
    NotebookStopped,
)
from services.kit.inbox import UnitOfWork
from services.quota import repo
from services.quota.domain import PRODUCT_POLICY, Outcome, QuotaDecision, decide_gpus
from services.quota.handlers import SOURCE, Guardrails, budget_blocked, current_period

ENDPOINT_PRODUCT, NOTEBOOK_PRODUCT = "real-time-endpoint", "notebook"


def endpoint_resource(name: str) -> str:
    return f"endpoint:{name}"


def notebook_resource(notebook_id: str) -> str:
    return f"notebook:{notebook_id}"


async def decide(uow: UnitOfWork, rails: Guardrails, *, team: str, product: str, gpus: int, holds: int,
                 resource_id: str) -> QuotaDecision:
    spec = rails.products.get(product)
    if spec is not None and gpus > spec.max_gpus:
        return QuotaDecision(Outcome.REJECT, (PRODUCT_POLICY,),
                             f"product {product} allows at most {spec.max_gpus} GPUs per replica, "
                             f"{gpus} were asked for")
    block = await repo.budget_block(uow.session, team=team, period=current_period())
    if block is not None:
        return budget_blocked(team, block)
    live = await repo.held_gpus(uow.session, resource_id=resource_id)
    if live is None and spec is not None and spec.max_per_team is not None:
        kind = resource_id.split(":", 1)[0]
        await repo.team_load(uow.session, team=team)  # the team's decision lock: one at a time
        running = await repo.live_resources(uow.session, team=team, kind=kind)
        if running >= spec.max_per_team:
            return QuotaDecision(Outcome.REJECT, (PRODUCT_POLICY,),
                                 f"team {team} has {running} {kind}s live, the most product {product} "
                                 f"allows; stop or delete one (aicloud {kind}s list) and ask again")
    held = live or 0
    if holds <= held:
        return QuotaDecision(Outcome.ADMIT, (), "no GPUs needed beyond what it already holds")
    extra = holds - held  # a redeploy with more replicas or GPUs asks only for the difference
    in_use, _ = await repo.team_load(uow.session, team=team)
    decision = decide_gpus(team=team, requested=extra, in_use=in_use, quota=rails.quota(team))
    if decision.outcome is Outcome.QUEUE:
        more = f"{extra} more" if held else f"{extra}"
        return QuotaDecision(Outcome.REJECT, decision.policy_ids,
                             f"over quota: team {team} uses {in_use} of {rails.quota(team)} GPUs and "
                             f"this needs {more}; stop a notebook or endpoint, or ask for more quota")
    return decision


async def on_endpoint_requested(event: EndpointRequested, uow: UnitOfWork, *, rails: Guardrails) -> None:
    resource = endpoint_resource(event.endpoint)
    holds = event.gpus * event.max_replicas
    decision = await decide(uow, rails, team=event.tenant, product=ENDPOINT_PRODUCT, gpus=event.gpus,
                            holds=holds, resource_id=resource)
    await repo.log_decision(uow.session, resource_id=resource, team=event.tenant, outcome=decision.outcome,
                            policy_ids=decision.policy_ids, reason=decision.reason)
    common = {"tenant": event.tenant, "correlation_id": event.endpoint, "source": SOURCE,
              "endpoint": event.endpoint}
    if decision.outcome is Outcome.ADMIT:
        await repo.hold(uow.session, resource_id=resource, team=event.tenant, gpus=holds)
        await uow.outbox.add(uow.session, EndpointAdmitted(request=event, reason=decision.reason, **common))
    else:
        await uow.outbox.add(uow.session, EndpointRejected(reason=decision.reason, **common))


async def on_endpoint_ended(event: EndpointDeleted | EndpointFailed, uow: UnitOfWork) -> None:
    if isinstance(event, EndpointFailed) and not event.endpoint_gone:
        return  # only a new version failed; the serving one keeps what it holds
    await repo.release(uow.session, resource_id=endpoint_resource(event.endpoint))


async def on_notebook_requested(event: NotebookRequested, uow: UnitOfWork, *, rails: Guardrails) -> None:
    resource = notebook_resource(event.notebook_id)
    decision = await decide(uow, rails, team=event.tenant, product=event.product, gpus=event.gpus,
                            holds=event.gpus, resource_id=resource)
    await repo.log_decision(uow.session, resource_id=resource, team=event.tenant, outcome=decision.outcome,
                            policy_ids=decision.policy_ids, reason=decision.reason)
    common = {"tenant": event.tenant, "correlation_id": event.notebook_id, "source": SOURCE,
              "notebook_id": event.notebook_id}
    if decision.outcome is Outcome.ADMIT:
        await repo.hold(uow.session, resource_id=resource, team=event.tenant, gpus=event.gpus)
        await uow.outbox.add(uow.session, NotebookAdmitted(request=event, reason=decision.reason, **common))
    else:
        await uow.outbox.add(uow.session, NotebookRejected(reason=decision.reason, **common))


async def on_notebook_stopped(event: NotebookStopped, uow: UnitOfWork) -> None:
    await repo.release(uow.session, resource_id=notebook_resource(event.notebook_id))
