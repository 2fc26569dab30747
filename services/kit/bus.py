"""The event bus: NATS JetStream streams per domain, durable pull consumers, explicit ack.

Every message is validated against its contract before a handler sees it. What cannot be
processed is never dropped: invalid JSON or an invalid schema goes straight to
``aicloud.dlq.<subject>`` with the error; a handler failure is nak'd with backoff and, after
``max_deliver`` attempts, dead-lettered too. Publishing sets ``Nats-Msg-Id = event_id`` so the
server's de-duplication window absorbs retries.

``Bus`` composes the pieces, one concern per module: ``streams`` (subjects, streams and
consumers), ``consume`` (one message at a time, in per-tenant lanes), ``batch`` (a whole fetch
at a time), ``settle`` (decode, ack, retry, dead-letter) and ``pull`` (fetching).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from contracts import Envelope
from contracts.wire import durable_name
from services.kit.batch import BatchConsumer
from services.kit.connect import dial
from services.kit.consume import LaneConsumer, dispatch
from services.kit.decode import Decoder, catalogue_decoder, json_reader, typed_decoder, typed_reader
from services.kit.metrics import Metrics
from services.kit.pull import Feed, Puller
from services.kit.settle import Redelivery, Settler
from services.kit.streams import Topology
from services.kit.subscription import (
    BatchProcess,
    BatchSubscription,
    Delivery,
    MessageSubscription,
    Process,
)
from services.kit.tracing import inject_headers

__all__ = ["Bus", "Delivery", "Process", "typed_decoder"]
log = structlog.get_logger(__name__)


class Bus:
    """One NATS connection per service process; publish and durable subscribe."""

    def __init__(
        self,
        *,
        nats_url: str,
        service: str,
        prefix: str = "",
        stream_replicas: int = 1,
        max_deliver: int = 5,
        ack_wait_s: float = 30.0,
        backoff_s: Sequence[float] = (0.5, 2.0, 10.0, 30.0),
        metrics: Metrics | None = None,
        batch: int = 128,
        max_in_flight: int = 32,
        user: str = "",
        password: str = "",
        streams: Sequence[str] | None = None,
    ) -> None:
        """``user``/``password``: the service's NATS identity (none: a server without auth).
        ``streams``: the domains whose streams ``connect`` creates or updates (default all);
        an identity may only touch those its permissions name."""
        self._url = nats_url
        self._user, self._password = user or None, (password or None) if user else None
        self._streams = tuple(streams) if streams is not None else None
        self.service = service
        self.topology = Topology(prefix, replicas=stream_replicas)
        self.redelivery = Redelivery(max_deliver, tuple(backoff_s) or (1.0,))
        self.metrics = metrics or Metrics(service)
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._max_in_flight = max_in_flight
        self._fetch_timeout_s = 1.0
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._subscriptions: list[MessageSubscription | BatchSubscription] = []
        self._stopping = asyncio.Event()
        self._settler = Settler(publish_raw=self.publish_raw, unwire=self.unwire,
                                redelivery=self.redelivery, metrics=self.metrics)

    @property
    def prefix(self) -> str:
        return self.topology.prefix

    @property
    def max_deliver(self) -> int:
        return self.redelivery.max_deliver

    @property
    def backoff_s(self) -> tuple[float, ...]:
        return self.redelivery.backoff_s

    def wire(self, subject: str) -> str:
        return self.topology.wire(subject)

    def unwire(self, wire_subject: str) -> str:
        return self.topology.unwire(wire_subject)

    def stream_name(self, domain: str) -> str:
        return self.topology.stream_name(domain)

    def stream_for(self, subject: str) -> str:
        return self.topology.stream_for(subject)

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected: call connect() first")
        return self._js

    async def connect(self) -> None:
        """Connect (``BusRefused`` if the server refuses the login) and ensure the streams."""
        self._nc = await dial(self._url, identity=self.service, user=self._user, password=self._password,
                              on_error=self._on_error)
        self._js = self._nc.jetstream()
        await self.ensure_streams()

    async def ensure_streams(self) -> None:
        """Create (or update) the streams this bus uses (by default every domain's and the
        dead-letter stream)."""
        await self.topology.ensure_streams(self.js, self._streams)

    async def _on_error(self, error: Exception) -> None:
        log.error("bus.nats_error", service=self.service, error=str(error))

    async def start(self) -> None:
        self._stopping.clear()
        for sub in self._subscriptions:
            if sub.task is None:
                consumer = self._consumer(sub, await self._feed(sub))
                sub.task = asyncio.create_task(consumer.run(), name=sub.durable)

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

    def subscribe(
        self,
        filter_subject: str,
        process: Process,
        *,
        decode: Decoder | None = None,
        durable: str | None = None,
    ) -> MessageSubscription:
        """Register a durable consumer on ``filter_subject`` (wildcards allowed here only).

        ``decode`` turns the JSON payload into a contract; by default the subject's own
        contract from the catalogue is used.
        """
        sub = MessageSubscription(filter_subject=filter_subject,
                                  durable=self._durable(filter_subject, durable),
                                  read=json_reader(decode or catalogue_decoder), process=process)
        self._subscriptions.append(sub)
        return sub

    def subscribe_batch(self, filter_subject: str, process: BatchProcess, *,
                        message_type: type[Envelope] | None, durable: str | None = None,
                        fetch: int = 1000, linger_s: float = 0.0,
                        deliveries: bool = False, ahead: int = 1) -> BatchSubscription:
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
        read = (typed_reader(message_type) if message_type is not None
                else json_reader(catalogue_decoder))
        sub = BatchSubscription(filter_subject=filter_subject,
                                durable=self._durable(filter_subject, durable), read=read,
                                process_batch=process, fetch=fetch, linger_s=linger_s,
                                with_deliveries=deliveries, ahead=ahead)
        self._subscriptions.append(sub)
        return sub

    async def dispatch(self, sub: MessageSubscription, msg: Msg) -> None:
        """Validate, process and settle one message. Never raises."""
        await dispatch(sub, msg, self._settler)

    def _durable(self, filter_subject: str, durable: str | None) -> str:
        return durable or durable_name(self.service, filter_subject)

    def _consumer(self, sub: MessageSubscription | BatchSubscription,
                  feed: Feed) -> LaneConsumer | BatchConsumer:
        if isinstance(sub, BatchSubscription):
            return BatchConsumer(sub, feed, self._settler)
        return LaneConsumer(sub, feed, self._settler, max_in_flight=self._max_in_flight)

    async def _feed(self, sub: MessageSubscription | BatchSubscription) -> Feed:
        """The subscription's durable consumer (created if new), ready to fetch from."""
        size = sub.fetch or self._batch
        stream = await self.topology.ensure_consumer(
            self.js, filter_subject=sub.filter_subject, durable=sub.durable,
            max_ack_pending=4 * size, ack_wait_s=self._ack_wait_s)
        assert self._nc is not None
        puller = Puller(self._nc, stream, sub.durable)
        await puller.start()
        return Feed(puller, sub.durable, size, self._fetch_timeout_s, self._stopping)
