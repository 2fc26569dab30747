"""catalog wiring: subjects to handlers, the API router, nothing else."""

from __future__ import annotations

from contracts.catalog import CatalogDataError, load_products
from services.catalog import handlers
from services.catalog.api import build_router
from services.catalog.repo import MIGRATIONS
from services.catalog.settings import CatalogSettings
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
    service.include_router(build_router(db=service.db, outbox=service.outbox, products=products))
    return service


def main() -> None:
    run(build, load_settings(CatalogSettings))
