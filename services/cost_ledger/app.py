"""cost-ledger wiring: usage batches into the ledger, its API and dashboard."""

from __future__ import annotations

from contracts.catalog import CatalogDataError, load_org
from contracts.pricebook import PriceBookError, load_price_book
from services.cost_ledger.api import build_router
from services.cost_ledger.domain import BOOKED
from services.cost_ledger.ledger import Ledger
from services.cost_ledger.metrics import LedgerMetrics
from services.cost_ledger.repo import MIGRATIONS
from services.cost_ledger.settings import CostLedgerSettings
from services.kit.runtime import Service, run
from services.kit.settings import ConfigError, load_settings


def build(settings: CostLedgerSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud cost ledger")
    try:
        prices = load_price_book(settings.price_book)
        teams = frozenset(t.name for t in load_org(settings.org_file).teams)
    except (PriceBookError, CatalogDataError) as exc:
        raise ConfigError(f"cost-ledger cannot start: {exc}") from None
    ledger = Ledger(db=service.db, outbox=service.outbox, prices=prices, teams=teams,
                    metrics=LedgerMetrics(service.metrics.registry), pools=dict(settings.pool_gpus))
    for booked in BOOKED:
        service.consume_batch(booked, ledger.ingest, fetch=settings.batch, linger_s=settings.linger_s)
    service.include_router(build_router(ledger, admin_token=settings.admin_token))
    return service


def main() -> None:
    run(build, load_settings(CostLedgerSettings))
