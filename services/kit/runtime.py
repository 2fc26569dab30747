"""The composition root every service process uses.

``Service`` builds settings-driven infrastructure (logging, tracing, metrics, bus, database,
outbox, inbox, HTTP) in one place; a service's ``app.py`` only says which subjects go to
which handlers and which routes it serves. Nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
import uvicorn
from aiohttp import web
from fastapi import APIRouter, FastAPI

from contracts import Envelope
from contracts.flows import FLOWS, stream_domains
from services.kit.bus import Bus, Delivery, typed_decoder
from services.kit.connect import BusRefused
from services.kit.db import Database, Migration
from services.kit.http import ReadinessCheck, create_http_app
from services.kit.inbox import Handler, Inbox
from services.kit.logging import configure_logging
from services.kit.metrics import Metrics
from services.kit.outbox import Outbox
from services.kit.settings import ConfigError, ServiceSettings
from services.kit.subscription import BatchProcess, Subscription
from services.kit.tracing import configure_tracing

log = structlog.get_logger(__name__)
Hook = Callable[[], Awaitable[None]]


class Service:
    """One running service: its bus, database, outbox, consumers and HTTP server."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        migrations: Sequence[Migration] = (),
        title: str = "",
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.metrics = Metrics(self.name)
        self.bus = Bus(
            nats_url=settings.nats_url,
            service=self.name,
            prefix=settings.subject_prefix,
            stream_replicas=settings.stream_replicas,
            max_deliver=settings.max_deliver,
            ack_wait_s=settings.ack_wait_s,
            backoff_s=settings.redelivery_backoff_s,
            metrics=self.metrics,
            user=settings.nats_user,
            password=settings.nats_password.get_secret_value(),
            # with an identity, only the streams its permissions name (without one, every
            # stream: test servers without auth, where any service may come first)
            streams=stream_domains(self.name) if settings.nats_user and self.name in FLOWS else None,
        )
        self.db = Database(url=settings.database_url, schema=settings.schema_name)
        self.outbox = Outbox(self.db, self.bus, poll_s=settings.outbox_poll_s)
        self.inbox: Inbox[Any] = Inbox(self.db, self.outbox)
        self.migrations = tuple(migrations)
        self.checks: dict[str, ReadinessCheck] = {"nats": self._check_bus, "postgres": self.db.ping}
        self.http: FastAPI = create_http_app(
            service=self.name, metrics=self.metrics, checks=self.checks, title=title
        )
        self._on_start: list[Hook] = []
        self._on_stop: list[Hook] = []
        self._server: uvicorn.Server | None = None
        self._web_app: Callable[[], web.Application] | None = None
        self._exit = asyncio.Event()

    # -- wiring (called from app.py) ----------------------------------------------------
    def consume(
        self, message_type: type[Envelope], handler: Handler[Any], *, durable: str | None = None
    ) -> None:
        """Run ``handler(event, uow)`` once per event, in a transaction with the inbox."""
        self.bus.subscribe(
            message_type.SUBJECT,
            self.inbox.wrap(handler),
            decode=typed_decoder(message_type),
            durable=durable,
        )

    def consume_batch(self, message_type: type[Envelope], handler: BatchProcess, *,
                      fetch: int = 1000, durable: str | None = None, linger_s: float = 0.0,
                      deliveries: bool = False, ahead: int = 1) -> Subscription:
        """Run ``handler(events)`` once per fetch of up to ``fetch`` events; the handler owns
        idempotency (e.g. a unique key per event in the same transaction as its effect).
        ``linger_s`` gathers a trickle into fewer batches (see ``Bus.subscribe_batch``)."""
        return self.bus.subscribe_batch(message_type.SUBJECT, handler, message_type=message_type,
                                        durable=durable, fetch=fetch, linger_s=linger_s,
                                        deliveries=deliveries, ahead=ahead)

    def observe(
        self, filter_subject: str, handler: Callable[[Envelope, Delivery], Awaitable[None]]
    ) -> None:
        """Run ``handler(event, delivery)`` for every message on a wildcard, no transaction."""
        self.bus.subscribe(filter_subject, handler)

    def observe_batch(self, filter_subject: str, handler: BatchProcess, *, fetch: int = 1000,
                      linger_s: float = 0.25) -> None:
        """Run ``handler(events)`` per fetch on a wildcard: no transaction and no span per
        message, for consumers that only count (a span and an ack per event cost more than
        the counting)."""
        self.bus.subscribe_batch(filter_subject, handler, message_type=None, fetch=fetch,
                                 linger_s=linger_s)

    def include_router(self, router: APIRouter) -> None:
        self.http.include_router(router)

    def serve_aiohttp(self, factory: Callable[[], web.Application]) -> None:
        """Serve this aiohttp app (built after start) instead of the FastAPI one.

        For a data plane where per-request overhead matters (the inference router); the app
        must serve /healthz, /readyz and /metrics itself.
        """
        self._web_app = factory

    def on_start(self, hook: Hook) -> None:
        self._on_start.append(hook)

    def on_stop(self, hook: Hook) -> None:
        self._on_stop.append(hook)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self.checks[name] = check

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Migrate, connect, start the outbox relay and the consumers (not the HTTP server)."""
        await self.db.migrate(self.migrations)
        try:
            await self.bus.connect()
        except BusRefused as exc:
            prefix = str(self.settings.model_config.get("env_prefix", "")).upper()
            raise ConfigError(f"{exc}: check {prefix}NATS_USER and {prefix}NATS_PASSWORD") from None
        for hook in self._on_start:
            await hook()
        self.outbox.start()
        await self.bus.start()
        log.info("service.started", consumers=[s.durable for s in self.bus._subscriptions])

    async def stop(self) -> None:
        for hook in reversed(self._on_stop):
            with contextlib.suppress(Exception):
                await hook()
        await self.outbox.stop()
        await self.bus.stop()
        await self.db.dispose()
        log.info("service.stopped")

    async def serve(self) -> None:
        """Start everything, serve HTTP until SIGTERM/SIGINT, then stop cleanly."""
        await self.start()
        if self._web_app is not None:
            await self._serve_web(self._web_app())
            return
        config = uvicorn.Config(
            self.http,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        # uvicorn re-raises the signal it caught once it has shut down; this handler absorbs
        # it, so the process goes on to stop the bus, outbox and database cleanly.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_exit)
        try:
            await self._server.serve()
        finally:
            await self.stop()

    def web_app(self) -> web.Application:
        """The aiohttp app given to ``serve_aiohttp`` (after ``start``), e.g. to serve in tests."""
        if self._web_app is None:
            raise RuntimeError(f"{self.name} serves FastAPI, not aiohttp")
        return self._web_app()

    async def _serve_web(self, app: web.Application) -> None:
        runner = web_runner(app)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._request_exit)
        try:
            await runner.setup()
            await web.TCPSite(runner, self.settings.http_host, self.settings.http_port,
                              backlog=1024).start()
            log.info("http.listening", port=self.settings.http_port)
            await self._exit.wait()
        finally:
            await runner.cleanup()
            await self.stop()

    def _request_exit(self) -> None:
        self._exit.set()
        if self._server is not None:
            self._server.should_exit = True

    async def _check_bus(self) -> None:
        if not self.bus.connected:
            raise ConnectionError("not connected to NATS")


def web_runner(app: web.Application) -> web.AppRunner:
    # handler_cancellation: a caller that disconnects cancels its handler, and so its
    # upstream request, instead of letting it run on for nobody.
    return web.AppRunner(app, handler_cancellation=True, access_log=None)


def run(build: Callable[[Any], Service], settings: ServiceSettings) -> None:
    """Entry point for ``python -m services.<name>``: configure the process, build, serve."""
    configure_logging(service=settings.service_name, level=settings.log_level)
    provider = configure_tracing(
        service=settings.service_name,
        otlp_endpoint=settings.otlp_endpoint,
        trace_file=settings.trace_file,
    )
    tune_gc()
    try:
        asyncio.run(build(settings).serve())
    finally:
        provider.shutdown()


def tune_gc() -> None:
    """Fewer, cheaper garbage collections for a long-running event consumer. What exists after
    start-up (modules, settings, the app) lives as long as the process, so it is frozen out of
    the collector's scans; young collections run every 10,000 allocations instead of 700, which
    a 1,000-message batch passes many times over. The ledger drains a backlog about 25 %
    faster with this (``bench/ledger_ingest.py``)."""
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
