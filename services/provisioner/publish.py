"""The workflows' one way onto the bus: they build the contract event, this publishes it.

``publish`` is what every workflow calls since the ``typed-publish`` patch. The three
``emit_*_event`` activities are what runs started before it still call (``workflow.patched``
keeps their histories replaying): from the patch on they too are handed a ``Publish``; an
attempt scheduled before the upgrade and retried after it still carries its old string-kind
fact, read by ``legacy``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import activity

from services.kit.bus import Bus
from services.provisioner import legacy
from workflows.legacy import EmitInput, EndpointFact, NotebookFact
from workflows.publish import Publish


class Publisher:
    def __init__(self, *, bus: Bus) -> None:
        self._bus = bus

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.publish, self.emit_job_event, self.emit_endpoint_event, self.emit_notebook_event]

    @activity.defn(name="publish")
    async def publish(self, message: Publish) -> None:
        await self._bus.publish(message.event)

    @activity.defn(name="emit_job_event")
    async def emit_job_event(self, fact: Publish | EmitInput) -> None:
        await self._bus.publish(fact.event if isinstance(fact, Publish) else legacy.job_event(fact))

    @activity.defn(name="emit_endpoint_event")
    async def emit_endpoint_event(self, fact: Publish | EndpointFact) -> None:
        await self._bus.publish(fact.event if isinstance(fact, Publish) else legacy.endpoint_event(fact))

    @activity.defn(name="emit_notebook_event")
    async def emit_notebook_event(self, fact: Publish | NotebookFact) -> None:
        await self._bus.publish(fact.event if isinstance(fact, Publish) else legacy.notebook_event(fact))
