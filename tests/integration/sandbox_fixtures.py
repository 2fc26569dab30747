"""Agent runtime fixtures: the real catalog (it owns team keys) and the real agent runtime,
served over HTTP by uvicorn, on the session's NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from services.agent_runtime.app import build as build_runtime
from services.agent_runtime.settings import AgentRuntimeSettings
from services.catalog.app import build as build_catalog
from services.catalog.settings import CatalogSettings
from services.kit.runtime import Service
from services.kit.sandbox import Isolation, available

TEMPLATES = """
templates:
  python:
    interpreter: /usr/bin/python3
    limits: {memory_mb: 256, cpu_s: 2, pids: 24, disk_mb: 16, wall_s: 20, output_kb: 64}
    ttl_s: 600
    idle_s: 300
    max_lifetime_s: 900
    pool: 1
  shell:
    interpreter: /usr/bin/python3
    limits: {memory_mb: 128, cpu_s: 2, pids: 16, disk_mb: 8, wall_s: 10, output_kb: 64}
    idle_s: 6
    pool: 0
  numpy:
    interpreter: /usr/bin/python3
    packages: {numpy: "2.2.6"}
    pool: 0
"""


@dataclass
class Runtime:
    service: Service
    client: httpx.AsyncClient
    keys: dict[str, str]
    root: Path
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None
    stopped: bool = False

    async def stop(self) -> None:
        """Stop it as a deploy would (SIGTERM): the HTTP server, then the service."""
        if self.stopped:
            return
        self.stopped = True
        if self.server is not None and self.task is not None:
            self.server.should_exit = True
            await self.task
        await self.service.stop()

    def headers(self, team: str = "legal") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[team]}"}

    async def create(self, team: str = "legal", **body: Any) -> dict[str, Any]:
        response = await self.client.post("/v1/sandboxes", json=body, headers=self.headers(team))
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def exec(self, sandbox_id: str, team: str = "legal",
                   **body: Any) -> tuple[str, str, dict[str, Any]]:
        """Run a command; (stdout, stderr, the final line)."""
        response = await self.client.post(f"/v1/sandboxes/{sandbox_id}/exec", json=body,
                                          headers=self.headers(team), timeout=60)
        assert response.status_code == 200, response.text
        lines = [json.loads(line) for line in response.text.splitlines()]
        out = "".join(line.get("stdout", "") for line in lines)
        err = "".join(line.get("stderr", "") for line in lines)
        return out, err, lines[-1]


async def serve(service: Service) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(uvicorn.Config(service.http, host="127.0.0.1", port=0, log_config=None,
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


def sandbox_root(prefix: str) -> Path:
    """Sandbox state must be reachable by the sandboxes' own uids: not under pytest's 0700 tmp."""
    return Path("/var/tmp/aicloud-tests") / prefix


@pytest.fixture
async def make_runtime(service_env: dict[str, str], prefix: str, tmp_path: Path
                       ) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    started: list[Runtime] = []
    clients: list[httpx.AsyncClient] = []
    keys_file = tmp_path / "keys.json"
    catalog = build_catalog(CatalogSettings(**service_env, db_schema=f"{prefix}_catalog",
                                            demo_keys_file=keys_file))
    await catalog.start()
    templates = tmp_path / "templates.yaml"
    templates.write_text(TEMPLATES)

    async def make(isolation: Isolation, **extra: Any) -> Runtime:
        if isolation not in available():
            pytest.skip(f"{isolation} is not installed here (apt-get install runsc bubblewrap)")
        root = sandbox_root(prefix)
        settings = AgentRuntimeSettings(**{**service_env, "db_schema": f"{prefix}_agents",
                                           "templates": templates, "sandbox_dir": root,
                                           "isolation": isolation.value, **extra})
        catalog_client = httpx.AsyncClient(transport=httpx.ASGITransport(app=catalog.http),
                                           base_url="http://catalog")
        service = build_runtime(settings, catalog=catalog_client)
        await service.start()
        server, task, port = await serve(service)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        clients.append(client)
        runtime = Runtime(service, client, json.loads(keys_file.read_text()), root, server, task)
        started.append(runtime)
        return runtime

    yield make
    for client in clients:
        await client.aclose()
    for runtime in reversed(started):
        await runtime.stop()
    await catalog.stop()
    for name in ("agents", "catalog"):
        cleanup = Service(CatalogSettings(**service_env, db_schema=f"{prefix}_{name}"))
        await cleanup.db.drop_schema()
        await cleanup.db.dispose()
    shutil.rmtree(sandbox_root(prefix), ignore_errors=True)
