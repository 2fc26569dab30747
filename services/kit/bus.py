"""The event bus: NATS JetStream streams per domain, durable pull consumers, explicit ack.

Every message is validated against its contract before a handler sees it. What cannot be
processed is never dropped: invalid JSON or an invalid schema goes straight to
``aicloud.dlq.<subject>`` with the error; a handler failure is nak'd with backoff and, after
``max_deliver`` attempts, dead-lettered too. Publishing sets ``Nats-Msg-Id = event_id`` so the
server's de-duplication window absorbs retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from contracts import DOMAINS, DeadLetter, Envelope, dead_letter_subject
from contracts.envelope import DLQ_PREFIX
from services.kit.metrics import Metrics
from services.kit.pull import Puller, delivery_count
from services.kit.subscription import (
    BatchProcess,
    Decoder,
    Delivery,
    PartialFailure,
    Process,
    Subscription,
    UnknownSubject,
    catalogue_decoder,
    describe_error,
    forget_tail,
    tenant_of,
    typed_decoder,
)
from services.kit.tracing import extract_context, inject_headers

__all__ = ["Bus", "Delivery", "Process", "typed_decoder"]


async def _unused(event: Any, delivery: Delivery) -> None:
    raise AssertionError("a batch subscription has no per-message handler")

log = structlog.get_logger(__name__)
tracer = trace.get_tracer("aicloud.bus")

class Bus:
    """One NATS connection per service process; publish and durable subscribe."""

    def __init__(
        self,
        *,
        nats_url: str,
        service: str,
        prefix: str = "",
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
        metrics: Metrics | None = None,
        batch: int = 128,
        max_in_flight: int = 32,
    ) -> None:
        self._url = nats_url
        self.service = service
        self.prefix = prefix
        self.max_deliver = max_deliver
        self.backoff_s = tuple(backoff_s) or (1.0,)
        self.metrics = metrics or Metrics(service)
        self._batch = batch
        self._max_in_flight = max_in_flight
        self._fetch_timeout_s = 1.0
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._subscriptions: list[Subscription] = []
        self._stopping = asyncio.Event()

    # -- naming -------------------------------------------------------------------------
    def wire(self, subject: str) -> str:
        """The subject on the wire: contract subjects get the isolation prefix, if any."""
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def unwire(self, wire_subject: str) -> str:
        if self.prefix and wire_subject.startswith(self.prefix + "."):
            return wire_subject[len(self.prefix) + 1 :]
        return wire_subject

    def stream_name(self, domain: str) -> str:
        base = f"AICLOUD_{domain.upper()}"
        return f"{self.prefix.upper()}_{base}" if self.prefix else base

    def stream_for(self, subject: str) -> str:
        if subject.startswith(DLQ_PREFIX + "."):
            return self.stream_name("dlq")
        return self.stream_name(subject.split(".")[1])

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected: call connect() first")
        return self._js

    async def connect(self) -> None:
        self._nc = await nats.connect(
            self._url,
            name=self.service,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
        )
        self._js = self._nc.jetstream()
        await self.ensure_streams()

    async def ensure_streams(self) -> None:
        """Create (or update) one stream per domain and the dead-letter stream."""
        for domain in (*DOMAINS, "dlq"):
            pattern = f"{DLQ_PREFIX}.>" if domain == "dlq" else f"aicloud.{domain}.>"
            config = StreamConfig(
                name=self.stream_name(domain),
                subjects=[self.wire(pattern)],
                duplicate_window=120.0,
                max_age=7 * 24 * 3600.0,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await self.js.update_stream(config)

    async def start(self) -> None:
        self._stopping.clear()
        for sub in self._subscriptions:
            if sub.task is None:
                pull = await self._pull_subscription(sub)
                sub.task = asyncio.create_task(self._consume(sub, pull), name=sub.durable)

    async def stop(self) -> None:
        # Let in-flight messages settle: each loop sees the flag within one fetch timeout.
        self._stopping.set()
        tasks = [sub.task for sub in self._subscriptions if sub.task is not None]
        if tasks:
            _, slow = await asyncio.wait(tasks, timeout=self._fetch_timeout_s + 1)
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        for sub in self._subscriptions:
            sub.task = None
        if self._nc is not None and not self._nc.is_closed:
            # Not drain(): a fetch cut short leaves messages in the pull subscription's queue
            # and drain would wait for them. Unacked messages are redelivered, so close is safe.
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            await self._nc.close()
        self._nc = self._js = None

    # -- publish ------------------------------------------------------------------------
    async def publish(self, event: Envelope, *, headers: dict[str, str] | None = None) -> None:
        """Publish an event on its subject, de-duplicated by event_id, with trace context."""
        await self.publish_raw(
            event.SUBJECT,
            event.model_dump_json().encode(),
            message_id=str(event.event_id),
            headers=headers,
        )

    async def publish_raw(
        self,
        subject: str,
        data: bytes,
        *,
        message_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        out = dict(headers or {})
        if "traceparent" not in out:
            inject_headers(out)
        out["Nats-Msg-Id"] = message_id
        await self.js.publish(self.wire(subject), data, headers=out)
        self.metrics.published.labels(subject=subject).inc()

    # -- subscribe ----------------------------------------------------------------------
    def subscribe(
        self,
        filter_subject: str,
        process: Process,
        *,
        decode: Decoder | None = None,
        durable: str | None = None,
    ) -> Subscription:
        """Register a durable consumer on ``filter_subject`` (wildcards allowed here only).

        ``decode`` turns the JSON payload into a contract; by default the subject's own
        contract from the catalogue is used.
        """
        name = durable or f"{self.service}--{filter_subject}".replace(".", "_").replace(">", "all")
        name = name.replace("*", "any")
        sub = Subscription(filter_subject, name, decode or catalogue_decoder, process)
        self._subscriptions.append(sub)
        return sub

    def subscribe_batch(self, filter_subject: str, process: BatchProcess, *,
                        message_type: type[Envelope] | None, durable: str | None = None,
                        fetch: int = 1000, linger_s: float = 0.0,
                        deliveries: bool = False, ahead: int = 1) -> Subscription:
        """A durable consumer handled a whole fetch at a time, for high-volume idempotent
        ingestion (one transaction per batch). Invalid messages are dead-lettered first; a
        failing batch is retried message by message like any handler failure. Without a
        ``message_type`` (a wildcard), each message is decoded by its subject's contract.

        ``linger_s``: when a fetch comes back short (the consumer has caught up), wait this
        long and top it up once, so a trickle of events costs one batch per ``linger_s``
        instead of one per event; a full fetch (a backlog) is processed at once.

        ``deliveries``: the handler gets (event, Delivery) pairs, with each message's headers
        (its trace context), instead of events. It may raise ``PartialFailure`` to have only
        some messages retried.

        ``ahead``: batches fetched and decoded while one is processed. 1 overlaps decoding
        with the handler's database waits (throughput); 0 lets every message that arrives
        during a batch join the very next one (latency)."""
        decode = typed_decoder(message_type) if message_type is not None else catalogue_decoder
        sub = self.subscribe(filter_subject, _unused, decode=decode, durable=durable)
        sub.process, sub.process_batch, sub.fetch = None, process, fetch
        sub.linger_s = linger_s
        sub.message_type = message_type
        sub.with_deliveries = deliveries
        sub.ahead = ahead
        return sub

    async def _pull_subscription(self, sub: Subscription) -> Puller:
        config = ConsumerConfig(
            durable_name=sub.durable,
            filter_subject=self.wire(sub.filter_subject),
            ack_wait=30.0,
            # Unlimited at the server: the kit counts deliveries itself and dead-letters past
            # max_deliver, so a message whose handler crashed the process is never lost.
            max_deliver=-1,
            max_ack_pending=4 * (sub.fetch or self._batch),
        )
        stream = self.stream_for(sub.filter_subject)
        try:
            await self.js.consumer_info(stream, sub.durable)
        except NotFoundError:
            await self.js.add_consumer(stream, config=config)
        assert self._nc is not None
        puller = Puller(self._nc, stream, sub.durable)
        await puller.start()
        return puller

    async def _consume(self, sub: Subscription, pull: Puller) -> None:
        """Fetch continuously; tenants are processed concurrently (up to ``max_in_flight`` lanes
        at once), each tenant's messages strictly in arrival order."""
        if sub.process_batch is not None:
            await self._consume_batches(sub, pull)
            return
        in_flight = asyncio.Semaphore(self._max_in_flight)
        tails: dict[str, asyncio.Task[None]] = {}
        try:
            while not self._stopping.is_set():
                try:
                    messages = await pull.fetch(sub.fetch or self._batch,
                                                wait_s=self._fetch_timeout_s)
                except nats.errors.Error as exc:
                    log.warning("bus.fetch_failed", consumer=sub.durable, error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                if not messages:
                    continue
                lanes: dict[str, list[Msg]] = {}
                for msg in messages:
                    lanes.setdefault(tenant_of(msg.data), []).append(msg)
                for key, queue in lanes.items():
                    await in_flight.acquire()
                    task = asyncio.create_task(self._in_lane(tails.get(key), sub, queue, in_flight))
                    tails[key] = task
                    task.add_done_callback(partial(forget_tail, tails, key))
        finally:
            if tails:
                await asyncio.gather(*tails.values(), return_exceptions=True)

    async def _consume_batches(self, sub: Subscription, pull: Puller) -> None:
        """Batches one after the other, in order. A slot is taken before fetching: at most
        ``ahead`` batches are fetched (and decoded) while one is processed, and what arrives
        meanwhile waits in the puller to join the next batch, rather than queueing as many
        small batches that each pay a whole transaction (or waiting behind one fetched too
        early)."""
        slots = asyncio.Semaphore(1 + sub.ahead)
        tail: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                try:
                    messages = await pull.fetch(sub.fetch or self._batch,
                                                wait_s=self._fetch_timeout_s)
                except nats.errors.Error as exc:
                    slots.release()
                    log.warning("bus.fetch_failed", consumer=sub.durable, error=str(exc))
                    await asyncio.sleep(0.5)
                    continue
                if not messages:
                    slots.release()
                    continue
                messages += await self._top_up(sub, pull, len(messages))
                tail = asyncio.create_task(self._dispatch_batch(sub, messages, tail, slots))
        finally:
            if tail is not None:
                await asyncio.gather(tail, return_exceptions=True)

    async def _top_up(self, sub: Subscription, pull: Puller,
                      have: int) -> list[Msg]:
        wanted = (sub.fetch or self._batch) - have
        if not sub.linger_s or wanted <= 0:
            return []
        await asyncio.sleep(sub.linger_s)
        try:
            return await pull.fetch(wanted, wait_s=0.05)
        except nats.errors.Error:
            return []  # the next regular fetch says what is wrong

    async def _in_lane(self, before: asyncio.Task[None] | None, sub: Subscription,
                       queue: list[Msg], in_flight: asyncio.Semaphore) -> None:
        """One tenant's share of a batch, after that tenant's previous share."""
        try:
            if before is not None:
                await asyncio.wait([before])  # order within the tenant; its outcome is its own
            for msg in queue:
                await self.dispatch(sub, msg)
        finally:
            in_flight.release()

    async def _decoded(self, sub: Subscription, msg: Msg) -> Any:
        """The message's contract, or None once it was dead-lettered (invalid, or given up)."""
        subject = self.unwire(msg.subject)
        deliveries = delivery_count(msg)
        if sub.message_type is not None:
            return await self._decoded_json(sub, msg, sub.message_type, deliveries)
        try:
            payload = json.loads(msg.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            await self._dead_letter(sub, msg, "invalid_json", f"payload is not JSON: {exc}")
            return None
        try:
            event = sub.decode(subject, payload)
        except (ValidationError, UnknownSubject) as exc:
            await self._dead_letter(sub, msg, "invalid_schema", describe_error(exc))
            return None
        if deliveries > self.max_deliver:
            await self._dead_letter(
                sub, msg, "handler_error", f"gave up after {deliveries - 1} deliveries"
            )
            return None
        return event

    async def _decoded_json(self, sub: Subscription, msg: Msg, message_type: type[Envelope],
                            deliveries: int) -> Any:
        """The fast path: validate the bytes directly (no intermediate dict)."""
        try:
            event = message_type.model_validate_json(msg.data)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                await self._dead_letter(sub, msg, "invalid_json", f"payload is not JSON: {exc}")
            else:
                await self._dead_letter(sub, msg, "invalid_schema", describe_error(exc))
            return None
        if deliveries > self.max_deliver:
            await self._dead_letter(
                sub, msg, "handler_error", f"gave up after {deliveries - 1} deliveries")
            return None
        return event

    async def _dispatch_batch(self, sub: Subscription, messages: list[Msg],
                              before: asyncio.Task[None] | None, in_flight: asyncio.Semaphore) -> None:
        try:
            valid: list[tuple[Any, Msg]] = []
            for msg in messages:
                event = await self._decoded(sub, msg)
                if event is not None:
                    valid.append((event, msg))
            if before is not None:
                await asyncio.wait([before])
            if valid:
                await self._process_batch(sub, valid)
        finally:
            in_flight.release()

    async def _process_batch(self, sub: Subscription, valid: list[tuple[Any, Msg]]) -> None:
        assert sub.process_batch is not None
        started = time.perf_counter()
        failed: dict[int, Exception] = {}
        try:
            if sub.with_deliveries:
                refused = await sub.process_batch([
                    (event, Delivery(self.unwire(msg.subject), dict(msg.headers or {}),
                                     delivery_count(msg), sub.durable)) for event, msg in valid])
            else:
                refused = await sub.process_batch([event for event, _ in valid])
        except PartialFailure as partial:
            refused, failed = {}, partial.failed
        except Exception as exc:
            log.warning("bus.batch_failed", consumer=sub.durable, size=len(valid), error=str(exc))
            for _, msg in valid:
                await self._retry_or_dead_letter(sub, msg, delivery_count(msg), exc)
            return
        subject = self.unwire(valid[0][1].subject)
        for i, (_, msg) in enumerate(valid):
            if i in failed:
                await self._retry_or_dead_letter(sub, msg, delivery_count(msg), failed[i])
            elif i in refused:
                await self._dead_letter(sub, msg, "rejected", refused[i])
            else:
                await msg.ack()
        self.metrics.observe_consumed(subject, "ok", time.perf_counter() - started)

    async def dispatch(self, sub: Subscription, msg: Msg) -> None:
        """Validate, process and settle one message. Never raises."""
        subject = self.unwire(msg.subject)
        headers = dict(msg.headers or {})
        deliveries = delivery_count(msg)
        started = time.perf_counter()
        event = await self._decoded(sub, msg)
        if event is None:
            return
        assert sub.process is not None
        delivery = Delivery(subject, headers, deliveries, sub.durable)
        with tracer.start_as_current_span(
            f"{subject} process",
            context=extract_context(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.consumer.group.name": sub.durable,
                "messaging.message.id": str(getattr(event, "event_id", "")),
                "aicloud.tenant": getattr(event, "tenant", ""),
            },
        ) as span:
            try:
                await sub.process(event, delivery)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                await self._retry_or_dead_letter(sub, msg, deliveries, exc)
                return
        await msg.ack()
        self.metrics.observe_consumed(subject, "ok", time.perf_counter() - started)

    async def _retry_or_dead_letter(
        self, sub: Subscription, msg: Msg, deliveries: int, exc: Exception
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if deliveries >= self.max_deliver:
            await self._dead_letter(sub, msg, "handler_error", error)
            return
        delay = self.backoff_s[min(deliveries - 1, len(self.backoff_s) - 1)]
        log.warning(
            "bus.handler_failed", consumer=sub.durable, deliveries=deliveries, retry_in_s=delay,
            error=error,
        )
        await msg.nak(delay=delay)
        self.metrics.observe_consumed(self.unwire(msg.subject), "retried", 0.0)

    async def _dead_letter(self, sub: Subscription, msg: Msg, reason: str, error: str) -> None:
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
            await self.publish_raw(
                dead_letter_subject(subject),
                record.model_dump_json().encode(),
                message_id=f"dlq:{sub.durable}:{seq}",
            )
        except Exception as exc:
            # Keep the message: it will be delivered again rather than lost.
            log.error("bus.dead_letter_failed", consumer=sub.durable, error=str(exc))
            await msg.nak(delay=self.backoff_s[-1])
            return
        await msg.term()
        log.warning("bus.dead_lettered", consumer=sub.durable, subject=subject, reason=reason,
                    error=error)
        self.metrics.observe_consumed(subject, "dead_lettered", 0.0)
