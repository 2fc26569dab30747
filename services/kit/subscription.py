"""What a subscription is made of: decoding, the delivery a handler sees, ordering keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from contracts import BY_SUBJECT, DeadLetter, Envelope
from contracts.envelope import DLQ_PREFIX

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
Decoder = Callable[[str, Any], BaseModel]


class UnknownSubject(ValueError):
    """A message arrived on a subject no contract describes."""


@dataclass(frozen=True)
class Delivery:
    """What a handler may know about the message it is processing."""

    subject: str
    headers: dict[str, str]
    num_delivered: int
    consumer: str


@dataclass
class Subscription:
    filter_subject: str
    durable: str
    decode: Decoder
    process: Process | None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    process_batch: BatchProcess | None = None
    fetch: int | None = None  # messages per fetch, when not the bus's default
    linger_s: float = 0.0  # batch consumers: wait this long to fill a short batch
    message_type: type[Envelope] | None = None  # validated straight from the bytes when known
    with_deliveries: bool = False  # a batch handler gets (event, Delivery) pairs
    ahead: int = 1  # batch consumers: batches fetched while one is processed


def typed_decoder(message_type: type[Envelope]) -> Decoder:
    def decode(_: str, payload: Any) -> Envelope:
        return message_type.model_validate(payload)

    return decode


def catalogue_decoder(subject: str, payload: Any) -> BaseModel:
    """Decode any message of the catalogue by its subject (for wildcard subscribers)."""
    if subject.startswith(DLQ_PREFIX + "."):
        return DeadLetter.model_validate(payload)
    message_type = BY_SUBJECT.get(subject)
    if message_type is None:
        raise UnknownSubject(f"no contract is registered for subject {subject!r}")
    return message_type.model_validate(payload)


def forget_tail(tails: dict[str, asyncio.Task[None]], key: str, done: asyncio.Task[None]) -> None:
    if tails.get(key) is done:
        del tails[key]


def tenant_of(data: bytes) -> str:
    """The ordering key of a message: its tenant (unparseable ones share one lane)."""
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    return str(payload.get("tenant", "")) if isinstance(payload, dict) else ""


def describe_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(message)"
            parts.append(f"{where}: {err['msg']}")
        return f"{exc.title} failed validation: " + "; ".join(parts)
    return str(exc)
