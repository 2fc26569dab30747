"""inference-router wiring: events to handlers, the gateway's parts, the aiohttp app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import structlog
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from contracts import (
    BudgetChanged,
    BudgetExhausted,
    EndpointDeleted,
    EndpointReady,
    EndpointRetired,
    EndpointScaledToZero,
)
from contracts.catalog import CatalogDataError, load_org
from contracts.pricebook import PriceBookError, load_price_book
from guardrails.quality import QualityFileError, load_quality
from services.inference_router import handlers, keys, repo
from services.inference_router.config import Route, RouteConfigError, load_config
from services.inference_router.gateway import Block, Budgets, Gateway
from services.inference_router.limits import KvBuckets, Limiter
from services.inference_router.quality import Sampler
from services.inference_router.replicas import Sessions
from services.inference_router.repo import MIGRATIONS
from services.inference_router.routing import RouteTable
from services.inference_router.settings import RouterSettings
from services.inference_router.usage import UsageSink
from services.inference_router.wake import Waker
from services.inference_router.web import RouterApi
from services.kit.inbox import UnitOfWork
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings

log = structlog.get_logger(__name__)


class Router:
    """The router's live parts, built in ``build`` and started with the service."""

    def __init__(self, service: Service, settings: RouterSettings) -> None:
        self.service, self.settings = service, settings
        try:
            self.config = load_config(settings.routes_file)
            prices = load_price_book(settings.price_book)
            quality = load_quality(settings.quality_file) if settings.quality_file else None
        except (RouteConfigError, PriceBookError, QualityFileError) as exc:
            raise ConfigError(f"inference-router cannot start: {exc}") from None
        self.prices = prices
        self.session: aiohttp.ClientSession | None = None
        self.routes = RouteTable()
        self.budgets = Budgets()
        self.sink = UsageSink(service.bus, spool=settings.usage_spool)
        self.sampler = Sampler(service.bus.publish, quality, registry=service.metrics.registry)
        self.gateway: Gateway | None = None
        self.overrides: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._mtime = settings.routes_file.stat().st_mtime

    def api(self) -> RouterApi:
        assert self.gateway is not None, "the router serves only once started"
        return RouterApi(gateway=self.gateway, sink=self.sink, metrics=self.service.metrics,
                         db=self.service.db, checks=self.service.checks,
                         admin_token=self.settings.admin_token,
                         max_body_bytes=self.settings.max_body_bytes,
                         max_tokens_cap=self.settings.max_tokens_cap, store_route=self.store_route,
                         sampler=self.sampler)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=512, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.routes.session = self.session
        self.routes.load(self.config)
        self.routes.endpoints.sessions = Sessions(self.session, per_socket=self.settings.socket_pool_size)
        self.routes.endpoints.timeout_s = self.settings.endpoint_timeout_s
        js = self.service.bus.js
        prefix = self.service.bus.stream_name("router").lower()
        copies = self.service.bus.topology.replicas  # as the streams: R3 on a cluster of three
        buckets = await js.create_key_value(KeyValueConfig(
            bucket=f"{prefix}_limits", history=1, storage=StorageType.FILE, ttl=32 * 24 * 3600,
            replicas=copies))
        settings = self.settings
        self.gateway = Gateway(routes=self.routes,
                               keys=keys.KeyCache(self.service.db, ttl_s=settings.key_cache_ttl_s),
                               limiter=Limiter(KvBuckets(buckets),
                                               lease_window_s=settings.lease_window_s,
                                               lease_ttl_s=settings.lease_ttl_s),
                               budgets=self.budgets, prices=self.prices,
                               waker=Waker(self.service.bus.publish, timeout_s=settings.wake_timeout_s,
                                           source=settings.service_name),
                               queue_timeout_s=settings.queue_timeout_s)
        self.overrides = await js.create_key_value(KeyValueConfig(bucket=f"{prefix}_routes", history=1,
                                                                  replicas=copies))
        await self._load_state()
        await self.sink.start()
        self._tasks = [asyncio.create_task(self._reload_loop(), name="routes-reload"),
                       asyncio.create_task(self._watch_overrides(), name="routes-watch"),
                       asyncio.create_task(self._return_leases(), name="lease-return")]
        if self.settings.demo_keys_file is not None:
            await self._seed_demo_keys()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                await self.gateway.limiter.return_idle(force=True)
        await self.sink.stop()
        await self.routes.endpoints.close()
        if self.session is not None:
            await self.session.close()

    async def store_route(self, alias: str, route: Route | None) -> None:
        assert self.overrides is not None
        if route is None:
            await self.overrides.delete(alias)
        else:
            await self.overrides.put(alias, route.model_dump_json().encode())

    async def _load_state(self) -> None:
        async with self.service.db.transaction() as session:
            for endpoint, serving, known in await repo.platform_endpoints(session):
                await self.routes.endpoints.restore(endpoint, serving, known)
            period = datetime.now(UTC).strftime("%Y-%m")
            for team, budget_id, per, action, spent, amount in await repo.budget_blocks(
                    session, period=period):
                self.budgets.block(team, Block(budget_id, per, action, spent, amount))

    async def _reload_loop(self) -> None:
        path = self.settings.routes_file
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                mtime = path.stat().st_mtime
                if mtime == self._mtime:
                    continue
                self._mtime = mtime
                self.config = load_config(path)
                self.routes.load(self.config)
                log.info("router.routes_reloaded", models=sorted(self.config.models))
            except (RouteConfigError, OSError) as exc:
                log.error("router.routes_rejected", error=str(exc), keeping="the last good routes")

    async def _watch_overrides(self) -> None:
        assert self.overrides is not None
        watcher = await self.overrides.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.routes.overrides.pop(entry.key, None)
                continue
            try:
                self.routes.overrides[entry.key] = Route.model_validate(orjson.loads(entry.value))
            except ValueError as exc:
                log.error("router.override_rejected", model=entry.key, error=str(exc))

    async def _return_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_ttl_s / 2)
            try:
                if self.gateway is not None:
                    await self.gateway.limiter.return_idle()
            except Exception as exc:
                log.warning("router.lease_return_failed", error=str(exc))

    async def _seed_demo_keys(self) -> None:
        try:
            teams = [t.name for t in load_org(self.settings.org_file).teams]
        except CatalogDataError as exc:
            raise ConfigError(f"inference-router cannot seed demo keys: {exc}") from None
        assert self.settings.demo_keys_file is not None
        await keys.seed_demo_keys(self.service.db, teams=teams, path=self.settings.demo_keys_file)


def build(settings: RouterSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud inference router")
    router = Router(service, settings)
    routes, budgets = {"routes": router.routes}, {"budgets": router.budgets}
    service.consume(EndpointReady, with_store(handlers.on_endpoint_ready, **routes))
    service.consume(EndpointRetired, with_store(handlers.on_endpoint_retired, **routes))
    service.consume(EndpointScaledToZero, with_store(handlers.on_endpoint_scaled_to_zero, **routes))
    service.consume(EndpointDeleted, with_store(handlers.on_endpoint_deleted, **routes))
    service.consume(BudgetExhausted, with_store(handlers.on_budget_exhausted, **budgets))
    service.consume(BudgetChanged, with_store(handlers.on_budget_changed, **budgets))
    service.on_start(router.start)
    service.on_stop(router.stop)
    service.serve_aiohttp(lambda: router.api().app())
    return service


def with_store(handler: Callable[..., Awaitable[None]],
               **ports: object) -> Callable[[Any, UnitOfWork], Awaitable[None]]:
    """``handler(event, store=..., **ports)`` on the transaction the inbox opened for the event."""
    async def handle(event: Any, uow: UnitOfWork) -> None:
        await handler(event, store=repo.SqlRouterStore(uow.session), **ports)

    return handle


def main() -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    run(build, load_settings(RouterSettings))
