"""catalog wiring: subjects to handlers, the API router, nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from contracts.catalog import CatalogDataError, load_org, load_products
from services.catalog import handlers, keys, workloads, workloads_api
from services.catalog.api import build_auth, build_router
from services.catalog.domain import ENDPOINT_EVENTS, NOTEBOOK_EVENTS
from services.catalog.repo import MIGRATIONS
from services.catalog.settings import CatalogSettings
from services.catalog.workloads_repo import SqlWorkloads
from services.kit.inbox import UnitOfWork
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings


def build(settings: CatalogSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud platform API")
    for event_type in handlers.STATUS_OF:
        service.consume(event_type, handlers.on_job_lifecycle)
    try:
        products = load_products(settings.policy_dir / "products.yaml")
    except CatalogDataError as exc:
        raise ConfigError(f"catalog cannot load its products: {exc}") from None
    service.include_router(build_router(db=service.db, outbox=service.outbox, products=products,
                                        provisioner_url=settings.provisioner_url,
                                        ledger_url=settings.ledger_url))
    for endpoint_event in ENDPOINT_EVENTS:
        service.consume(endpoint_event, with_store(workloads.on_endpoint_event))
    for notebook_event in NOTEBOOK_EVENTS:
        service.consume(notebook_event, with_store(workloads.on_notebook_event))
    service.include_router(workloads_api.build_router(db=service.db, outbox=service.outbox, products=products,
                                                      authenticate=build_auth(service.db)))
    if settings.demo_keys_file is not None:
        service.on_start(partial(seed_keys, service, settings.demo_keys_file, settings.policy_dir))
    return service


def with_store(handler: Callable[..., Awaitable[None]]) -> Callable[[Any, UnitOfWork], Awaitable[None]]:
    """``handler(event, store=...)`` on the transaction the inbox opened for the event."""
    async def handle(event: Any, uow: UnitOfWork) -> None:
        await handler(event, store=SqlWorkloads(uow.session, uow.outbox))

    return handle


async def seed_keys(service: Service, keys_file: Path, policy_dir: Path) -> None:
    org = load_org(policy_dir / "org.yaml")
    async with service.db.transaction() as session:
        seeded = await keys.seed_demo_keys(session, teams=[t.name for t in org.teams],
                                           known=keys.read_keys_file(keys_file))
    keys.write_keys_file(keys_file, seeded)


def main() -> None:
    run(build, load_settings(CatalogSettings))
