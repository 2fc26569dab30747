"""inference-router wiring."""

from __future__ import annotations

from contracts import BudgetExhausted, EndpointReady, EndpointRetired
from services.inference_router import handlers
from services.inference_router.repo import MIGRATIONS
from services.inference_router.settings import RouterSettings
from services.kit.runtime import Service, run
from services.kit.settings import load_settings


def build(settings: RouterSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud inference router")
    service.consume(EndpointReady, handlers.on_endpoint_ready)
    service.consume(EndpointRetired, handlers.on_endpoint_retired)
    service.consume(BudgetExhausted, handlers.on_budget_exhausted)
    return service


def main() -> None:
    run(build, load_settings(RouterSettings))
