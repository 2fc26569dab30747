"""agent-runtime wiring: sandboxes (their API and bus command), their reaper and warm pools."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

import httpx
import structlog

from contracts import CreateSandbox
from contracts.pricebook import PriceBookError, load_price_book
from services.agent_runtime import admin_api, agents_api, handlers
from services.agent_runtime.activities import AgentActivities
from services.agent_runtime.api import build_router
from services.agent_runtime.crypto import Keyring
from services.agent_runtime.repo import MIGRATIONS
from services.agent_runtime.sandboxes import Sandboxes
from services.agent_runtime.settings import AgentRuntimeSettings
from services.agent_runtime.state import STATE_MIGRATIONS
from services.agent_runtime.state_api import state_routes
from services.agent_runtime.sweeper import Sweeper
from services.agent_runtime.templates import TemplateError, load_templates
from services.kit.catalog_keys import CatalogKeys, team_dependency
from services.kit.runtime import Service, run
from services.kit.sandbox import Isolation, Sandbox, choose
from services.kit.settings import ConfigError, load_settings
from services.kit.temporal import BackgroundWorker, Temporal
from workflows.agent_run import AgentRunWorkflow

log = structlog.get_logger(__name__)


def build(settings: AgentRuntimeSettings, *, catalog: httpx.AsyncClient | None = None) -> Service:
    service = Service(settings, migrations=(*MIGRATIONS, *STATE_MIGRATIONS), title="aicloud agent runtime")
    try:
        templates = load_templates(settings.templates)
        isolation = choose(settings.isolation)
        if isolation is Isolation.RLIMITS and settings.isolation == "auto":
            raise RuntimeError("neither runsc nor bwrap is installed, and agent sandboxes run untrusted "
                               "code: install one (apt-get install runsc bubblewrap), or set "
                               "AICLOUD_AGENT_RUNTIME_ISOLATION=rlimits to accept no isolation")
        keyring = _keyring(settings)
    except (TemplateError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"agent-runtime cannot start: {exc}") from None
    root = settings.sandbox_dir
    sandbox = Sandbox(isolation, state_dir=root / "state", hidden=settings.sandbox_hidden_paths)
    sandboxes = Sandboxes(
        sandbox=sandbox,
        templates=templates,
        root=root,
        db=service.db,
        outbox=service.outbox,
        source=settings.service_name,
        max_per_team=settings.max_sandboxes_per_team,
        max_file_bytes=settings.max_file_bytes,
        pools=settings.pools,
        template_cache=settings.template_cache,
    )
    keys = CatalogKeys(
        catalog or httpx.AsyncClient(base_url=settings.catalog_url, timeout=5.0),
        ttl_s=settings.key_cache_ttl_s,
    )
    service.sandboxes = sandboxes  # type: ignore[attr-defined]
    service.consume(CreateSandbox, functools.partial(handlers.on_create_sandbox, sandboxes=sandboxes))
    team = team_dependency(keys)
    service.include_router(build_router(sandboxes, team))
    if keyring is not None:
        service.include_router(state_routes(db=service.db, keyring=keyring, team_dep=team))
        service.include_router(
            admin_api.build_router(db=service.db, keyring=keyring, admin_token=settings.admin_token)
        )
        sweeper = Sweeper(service.db, interval_s=settings.state_sweep_interval_s)
        service.on_start(sweeper.start)
        service.on_stop(sweeper.stop)
    else:
        log.warning(
            "state.off",
            detail="no master keys: set AICLOUD_AGENT_RUNTIME_STATE_MASTER_KEYS "
            "(or _FILE) and _STATE_ACTIVE_KEY to serve /v1/agents/*/memory and checkpoints",
        )
    service.on_start(sandboxes.start)
    service.on_stop(sandboxes.stop)
    if settings.temporal_address:  # after the sandboxes: the worker starts last and stops first
        _agent_runs(service, settings, sandboxes, team)
    service.on_stop(keys.aclose)
    return service


def _agent_runs(service: Service, settings: AgentRuntimeSettings, sandboxes: Sandboxes, team: Any) -> None:
    """Agent runs: a Temporal worker for AgentRunWorkflow in this process, and their API."""
    try:
        prices = load_price_book(settings.price_book)
    except PriceBookError as exc:
        raise ConfigError(f"agent-runtime cannot start: {exc}") from None
    keys_file = settings.router_keys_file
    router = httpx.AsyncClient(base_url=settings.router_url, timeout=120)
    activities = AgentActivities(
        sandboxes=sandboxes,
        db=service.db,
        outbox=service.outbox,
        router=router,
        router_keys=lambda: router_keys(keys_file),
        prices=prices,
        source=settings.service_name,
    )
    temporal = Temporal(settings.temporal_address, settings.temporal_namespace)
    worker: list[BackgroundWorker] = []
    known: dict[str, tuple[float, set[str]]] = {}  # team -> (when asked, the router's models)

    async def models(team: str) -> set[str] | None:
        """The model aliases the router serves the team, asked at most every 30 s; None when the
        router cannot say (no key for the team, router down)."""
        cached = known.get(team)
        if cached is not None and time.monotonic() - cached[0] < MODELS_TTL_S:
            return cached[1]
        key = router_keys(keys_file).get(team)
        if key is None:
            return None
        try:
            answer = await router.get("/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        except httpx.HTTPError:
            return None
        if answer.status_code != 200:
            return None
        served = {str(m["id"]) for m in answer.json().get("data", []) if isinstance(m, dict) and "id" in m}
        known[team] = (time.monotonic(), served)
        return served

    async def start() -> None:
        client = await temporal.connect()
        worker.append(BackgroundWorker(client, task_queue=settings.task_queue, workflows=[AgentRunWorkflow],
                                       activities=activities.all(), name="agent-worker"))
        worker[0].start()

    async def stop() -> None:
        for running in worker:
            await running.stop()
        await router.aclose()

    service.on_start(start)
    service.on_stop(stop)
    service.add_check("temporal", temporal.check)
    service.include_router(
        agents_api.build_router(
            db=service.db,
            outbox=service.outbox,
            client=lambda: temporal.client,
            task_queue=settings.task_queue,
            templates=lambda: set(sandboxes.templates),
            team_dep=team,
            models=models,
        )
    )


MODELS_TTL_S = 30.0


def router_keys(keys_file: Path | None) -> dict[str, str]:
    """Each team's inference router key for its agents (read each time: the file may change)."""
    return dict(json.loads(keys_file.read_text())) if keys_file and keys_file.exists() else {}


def _keyring(settings: AgentRuntimeSettings) -> Keyring | None:
    raw = settings.state_master_keys
    if settings.state_master_keys_file is not None:
        raw = settings.state_master_keys_file.read_text()
    if not raw:
        return None
    return Keyring.from_settings(master_keys_json=raw, active=settings.state_active_key)


def main() -> None:
    run(build, load_settings(AgentRuntimeSettings))
