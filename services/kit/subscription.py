"""What a subscription is: a durable consumer and what its handler gets.

A subscription is handled either one message at a time (:class:`MessageSubscription`, each
tenant in order) or a whole fetch at a time (:class:`BatchSubscription`); the two are separate
types so each carries only what its consumer loop reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.kit.decode import Reader

Process = Callable[[Any, "Delivery"], Awaitable[None]]
# A batch handler gets every valid message of one fetch, in order, and returns the messages it
# refuses for good (by position, with the reason), which are dead-lettered; the rest are acked.
# With ``deliveries=True`` it gets (event, Delivery) pairs instead of events.
BatchProcess = Callable[[list[Any]], Awaitable[dict[int, str]]]


class PartialFailure(Exception):
    """Raised by a batch handler whose batch succeeded except for some messages (by position,
    with the exception): those are retried (or dead-lettered) one by one, the rest are acked."""

    def __init__(self, failed: dict[int, Exception]) -> None:
        super().__init__(f"{len(failed)} message(s) of the batch failed")
        self.failed = failed


@dataclass(frozen=True)
class Delivery:
    """What a handler may know about the message it is processing."""

    subject: str
    headers: dict[str, str]
    num_delivered: int
    consumer: str


@dataclass(kw_only=True)
class Subscription:
    """What every durable consumer has, however its messages are handled."""

    filter_subject: str
    durable: str
    read: Reader  # bytes to contract; raises decode.Invalid for what can never be processed
    fetch: int | None = None  # messages per fetch, when not the bus's default
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(kw_only=True)
class MessageSubscription(Subscription):
    """Handled one message at a time: tenants in parallel, each tenant in arrival order."""

    process: Process


@dataclass(kw_only=True)
class BatchSubscription(Subscription):
    """Handled a whole fetch at a time (see ``Bus.subscribe_batch``)."""

    process_batch: BatchProcess
    fetch: int
    linger_s: float = 0.0  # wait this long to fill a short batch
    with_deliveries: bool = False  # the handler gets (event, Delivery) pairs
    ahead: int = 1  # batches fetched while one is processed
