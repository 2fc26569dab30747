"""catalog wiring: subjects to handlers, the API router, nothing else."""

from __future__ import annotations

from services.catalog import handlers
from services.catalog.api import build_router
from services.catalog.repo import MIGRATIONS
from services.catalog.settings import CatalogSettings
from services.kit.runtime import Service, run
from services.kit.settings import load_settings


def build(settings: CatalogSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud platform API")
    for event_type in handlers.STATUS_OF:
        service.consume(event_type, handlers.on_job_lifecycle)
    service.include_router(build_router(db=service.db, outbox=service.outbox))
    return service


def main() -> None:
    run(build, load_settings(CatalogSettings))
