"""How a delivered message ends: acked, nak'd for a later retry, or dead-lettered.

What cannot be processed is never dropped: a message that cannot be decoded, or that was
delivered too often, goes to ``aicloud.dlq.<subject>`` with the reason and is then termed.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from nats.aio.msg import Msg

from contracts import DeadLetter, dead_letter_subject
from services.kit.decode import Invalid
from services.kit.metrics import Metrics
from services.kit.pull import delivery_count
from services.kit.subscription import Subscription

log = structlog.get_logger(__name__)


class PublishRaw(Protocol):
    async def __call__(self, subject: str, data: bytes, *, message_id: str,
                       headers: dict[str, str] | None = None) -> None: ...


@dataclass(frozen=True)
class Redelivery:
    """How often a message is tried and how long to wait between tries."""

    max_deliver: int
    backoff_s: tuple[float, ...]

    def spent(self, attempts: int) -> bool:
        """Whether ``attempts`` tries are all a message gets: the one max-deliver check."""
        return attempts >= self.max_deliver

    def delay_s(self, deliveries: int) -> float:
        return self.backoff_s[min(deliveries - 1, len(self.backoff_s) - 1)]


class Settler:
    """Decodes and settles messages for every consumer of one bus."""

    def __init__(self, *, publish_raw: PublishRaw, unwire: Callable[[str], str],
                 redelivery: Redelivery, metrics: Metrics) -> None:
        self._publish_raw = publish_raw
        self.unwire = unwire
        self.redelivery = redelivery
        self.metrics = metrics

    async def decoded(self, sub: Subscription, msg: Msg) -> Any:
        """The message's contract, or None once it was dead-lettered (invalid, or given up)."""
        try:
            event = sub.read(self.unwire(msg.subject), msg.data)
        except Invalid as bad:
            await self.dead_letter(sub, msg, bad.reason, bad.error)
            return None
        # Every earlier delivery was a try that never settled (the process died in the
        # handler), so a message past its tries is given up before the handler sees it again.
        tried = delivery_count(msg) - 1
        if self.redelivery.spent(tried):
            await self.dead_letter(sub, msg, "handler_error", f"gave up after {tried} deliveries")
            return None
        return event

    async def ack(self, msg: Msg, subject: str, started: float) -> None:
        await msg.ack()
        self.metrics.observe_consumed(subject, "ok", time.perf_counter() - started)

    async def settle_batch(self, sub: Subscription, msgs: list[Msg], *, refused: dict[int, str],
                           failed: dict[int, Exception], started: float) -> None:
        """Each message of a handled batch, by position: retried (or dead-lettered) when it
        failed, dead-lettered when the handler refused it, acked otherwise."""
        for i, msg in enumerate(msgs):
            if i in failed:
                await self.retry_or_dead_letter(sub, msg, delivery_count(msg), failed[i])
            elif i in refused:
                await self.dead_letter(sub, msg, "rejected", refused[i])
            else:
                await msg.ack()
        subject = self.unwire(msgs[0].subject)
        self.metrics.observe_consumed(subject, "ok", time.perf_counter() - started)

    async def retry_or_dead_letter(self, sub: Subscription, msg: Msg, deliveries: int,
                                   exc: Exception) -> None:
        """After a handler failure: nak with backoff, or dead-letter once this was the last try."""
        error = f"{type(exc).__name__}: {exc}"
        if self.redelivery.spent(deliveries):
            await self.dead_letter(sub, msg, "handler_error", error)
            return
        delay = self.redelivery.delay_s(deliveries)
        log.warning(
            "bus.handler_failed", consumer=sub.durable, deliveries=deliveries, retry_in_s=delay,
            error=error,
        )
        await msg.nak(delay=delay)
        self.metrics.observe_consumed(self.unwire(msg.subject), "retried", 0.0)

    async def dead_letter(self, sub: Subscription, msg: Msg, reason: str, error: str) -> None:
        subject = self.unwire(msg.subject)
        record = DeadLetter(
            subject=subject,
            consumer=sub.durable,
            reason=reason,
            error=error,
            deliveries=delivery_count(msg),
            payload=msg.data.decode("utf-8", errors="replace"),
            payload_b64=base64.b64encode(msg.data).decode(),
            headers={k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Id"},
        )
        seq = msg.metadata.sequence.stream if msg.metadata.sequence else 0
        try:
            await self._publish_raw(
                dead_letter_subject(subject),
                record.model_dump_json().encode(),
                message_id=f"dlq:{sub.durable}:{seq}",
            )
        except Exception as exc:
            # Keep the message: it will be delivered again rather than lost.
            log.error("bus.dead_letter_failed", consumer=sub.durable, error=str(exc))
            await msg.nak(delay=self.redelivery.backoff_s[-1])
            return
        await msg.term()
        log.warning("bus.dead_lettered", consumer=sub.durable, subject=subject, reason=reason,
                    error=error)
        self.metrics.observe_consumed(subject, "dead_lettered", 0.0)
