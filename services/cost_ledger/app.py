"""cost-ledger wiring."""

from __future__ import annotations

from contracts import InferenceCompleted, UsageRecorded
from services.cost_ledger import handlers
from services.cost_ledger.repo import MIGRATIONS
from services.cost_ledger.settings import CostLedgerSettings
from services.kit.runtime import Service, run
from services.kit.settings import load_settings


def build(settings: CostLedgerSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud cost ledger")
    service.consume(UsageRecorded, handlers.on_usage_recorded)
    service.consume(InferenceCompleted, handlers.on_inference_completed)
    return service


def main() -> None:
    run(build, load_settings(CostLedgerSettings))
