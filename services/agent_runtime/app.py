"""agent-runtime wiring."""

from __future__ import annotations

from contracts import CreateSandbox
from services.agent_runtime import handlers
from services.agent_runtime.repo import MIGRATIONS
from services.agent_runtime.settings import AgentRuntimeSettings
from services.kit.runtime import Service, run
from services.kit.settings import load_settings


def build(settings: AgentRuntimeSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud agent runtime")
    service.consume(CreateSandbox, handlers.on_create_sandbox)
    return service


def main() -> None:
    run(build, load_settings(AgentRuntimeSettings))
