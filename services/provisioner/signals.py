"""Signalling the provisioner's entity workflows (endpoints, notebooks) by workflow id."""

from __future__ import annotations

from typing import Any

import structlog
from temporalio.client import Client
from temporalio.service import RPCError

log = structlog.get_logger(__name__)


async def signal(client: Client, workflow_id: str, name: str, *args: Any) -> None:
    """Signal a running entity workflow; one that already ended is logged, not retried forever."""
    try:
        await client.get_workflow_handle(workflow_id).signal(name, *args)
    except RPCError as exc:
        text = str(exc).lower()
        if "not found" not in text and "already completed" not in text:
            raise
        log.info("workflow.signal_ignored", workflow_id=workflow_id, signal=name, reason=str(exc))
