"""One message at a time: tenants in parallel lanes, each tenant's messages in arrival order.

A fetch is split by tenant; each tenant's share runs after that tenant's previous share, so
one tenant's slow handler delays only that tenant, and ``max_in_flight`` bounds the lanes.
"""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from typing import Any

from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.kit.pull import Feed, delivery_count
from services.kit.settle import Settler
from services.kit.subscription import Delivery, MessageSubscription
from services.kit.tracing import extract_context

tracer = trace.get_tracer("aicloud.bus")


class LaneConsumer:
    """The loop behind one :class:`MessageSubscription`."""

    def __init__(self, sub: MessageSubscription, feed: Feed, settler: Settler, *,
                 max_in_flight: int) -> None:
        self.sub, self.feed, self.settler = sub, feed, settler
        self._in_flight = asyncio.Semaphore(max_in_flight)

    async def run(self) -> None:
        """Fetch continuously; tenants are processed concurrently (up to ``max_in_flight`` lanes
        at once), each tenant's messages strictly in arrival order."""
        tails: dict[str, asyncio.Task[None]] = {}
        try:
            while self.feed.running:
                for key, queue in by_tenant(await self.feed.next()).items():
                    await self._in_flight.acquire()
                    task = asyncio.create_task(self._in_lane(tails.get(key), queue))
                    tails[key] = task
                    task.add_done_callback(partial(forget_tail, tails, key))
        finally:
            if tails:
                await asyncio.gather(*tails.values(), return_exceptions=True)

    async def _in_lane(self, before: asyncio.Task[None] | None, queue: list[Msg]) -> None:
        """One tenant's share of a batch, after that tenant's previous share."""
        try:
            if before is not None:
                await asyncio.wait([before])  # order within the tenant; its outcome is its own
            for msg in queue:
                await dispatch(self.sub, msg, self.settler)
        finally:
            self._in_flight.release()


async def dispatch(sub: MessageSubscription, msg: Msg, settler: Settler) -> None:
    """Validate, process and settle one message. Never raises."""
    subject = settler.unwire(msg.subject)
    headers = dict(msg.headers or {})
    deliveries = delivery_count(msg)
    started = time.perf_counter()
    event = await settler.decoded(sub, msg)
    if event is None:
        return
    delivery = Delivery(subject, headers, deliveries, sub.durable)
    with tracer.start_as_current_span(
        f"{subject} process",
        context=extract_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=_span_attributes(subject, sub.durable, event),
    ) as span:
        try:
            await sub.process(event, delivery)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            await settler.retry_or_dead_letter(sub, msg, deliveries, exc)
            return
    await settler.ack(msg, subject, started)


def _span_attributes(subject: str, consumer: str, event: Any) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.consumer.group.name": consumer,
        "messaging.message.id": str(getattr(event, "event_id", "")),
        "aicloud.tenant": getattr(event, "tenant", ""),
    }


def by_tenant(messages: list[Msg]) -> dict[str, list[Msg]]:
    lanes: dict[str, list[Msg]] = {}
    for msg in messages:
        lanes.setdefault(tenant_of(msg.data), []).append(msg)
    return lanes


def tenant_of(data: bytes) -> str:
    """The ordering key of a message: its tenant (unparseable ones share one lane)."""
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ""
    return str(payload.get("tenant", "")) if isinstance(payload, dict) else ""


def forget_tail(tails: dict[str, asyncio.Task[None]], key: str, done: asyncio.Task[None]) -> None:
    if tails.get(key) is done:
        del tails[key]
