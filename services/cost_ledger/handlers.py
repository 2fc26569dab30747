from __future__ import annotations

from contracts import InferenceCompleted, UsageRecorded
from services.cost_ledger import repo
from services.kit.inbox import UnitOfWork


async def on_usage_recorded(event: UsageRecorded, uow: UnitOfWork) -> None:
    await repo.append_usage(uow.session, event)


async def on_inference_completed(event: InferenceCompleted, uow: UnitOfWork) -> None:
    await repo.append_inference(uow.session, event)
