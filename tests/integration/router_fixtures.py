"""The inference router on real NATS and Postgres, in front of the fake OpenAI/Anthropic upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from aicloud.local.fake_llm import FakeLlm
from services.inference_router.app import build
from services.inference_router.settings import RouterSettings
from services.kit.runtime import Service, web_runner

ADMIN = "admin-token-for-tests"
UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class Upstream:
    fake: FakeLlm
    url: str

    def received(self) -> list[dict[str, Any]]:
        return list(self.fake.requests)


@dataclass
class RouterUnderTest:
    service: Service
    url: str
    routes_file: Path

    async def key(self, **spec: Any) -> str:
        async with httpx.AsyncClient(base_url=self.url) as client:
            r = await client.post("/admin/keys", json={"team": "legal", **spec},
                                  headers={"authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 201, r.text
            return str(r.json()["key"])


def routes_yaml(upstream: str) -> str:
    return f"""
providers:
  openai: {{kind: openai, base_url: "{upstream}/v1", api_key_env: FAKE_UPSTREAM_KEY, timeout_s: 5}}
  anthropic: {{kind: anthropic, base_url: "{upstream}/v1", api_key_env: FAKE_UPSTREAM_KEY, timeout_s: 5}}
  internal: {{kind: openai-compatible, base_url: "{upstream}/v1", api_key_env: FAKE_UPSTREAM_KEY,
             external: false}}
circuit_breaker: {{failures: 3, open_s: 30}}
models:
  gpt:
    targets: [{{provider: openai, model: fake-gpt}}]
  canaried:
    targets:
      - {{provider: openai, model: fake-gpt, weight: 80, version: stable}}
      - {{provider: openai, model: fake-gpt-canary, weight: 20, version: canary}}
    sticky: user
  claude:
    targets: [{{provider: anthropic, model: fake-claude}}]
  flaky:
    targets: [{{provider: openai, model: fake-gpt-fail}}]
    fallbacks: [claude]
    retries: 1
    backoff_s: 0.01
  cutting:
    targets: [{{provider: openai, model: fake-gpt-cut}}]
  cutting-claude:
    targets: [{{provider: anthropic, model: fake-claude-cut}}]
  slow:
    targets: [{{provider: openai, model: fake-gpt-slow}}]
  nousage:
    targets: [{{provider: openai, model: fake-gpt-nousage}}]
  hanging:
    targets: [{{provider: openai, model: fake-gpt-hang, timeout_s: 0.3}}]
    fallbacks: [claude]
    retries: 0
  big:
    targets: [{{provider: openai, model: fake-gpt-big}}]
  garbage:
    targets: [{{provider: openai, model: fake-gpt-garbage}}]
    retries: 0
  strict:
    targets: [{{provider: openai, model: fake-gpt}}]
    pii: block
  inside:
    targets: [{{provider: internal, model: fake-gpt}}]
  embed:
    kind: embeddings
    targets: [{{provider: openai, model: fake-embed}}]
"""


@pytest.fixture
async def upstream(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Upstream]:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", UPSTREAM_KEY)
    fake = FakeLlm(api_key=UPSTREAM_KEY)
    runner, url = await serve(fake.app())
    yield Upstream(fake, url)
    await runner.cleanup()


@pytest.fixture
async def make_router(service_env: dict[str, str], prefix: str, tmp_path: Path,
                      upstream: Upstream) -> AsyncIterator[Callable[..., Any]]:
    started: list[tuple[Service, web.AppRunner]] = []
    routes = tmp_path / "routes.yaml"
    routes.write_text(routes_yaml(upstream.url))

    async def make(**extra: Any) -> RouterUnderTest:
        settings = RouterSettings(**{
            **service_env, "db_schema": f"{prefix}_router", "routes_file": routes,
            "admin_token": ADMIN, "usage_spool": tmp_path / f"spool-{len(started)}.jsonl",
            "reload_interval_s": 0.2, "queue_timeout_s": 0.5, **extra})
        service = build(settings)
        await service.start()
        runner, url = await serve(service.web_app())
        started.append((service, runner))
        return RouterUnderTest(service, url, routes)

    yield make
    for service, runner in reversed(started):
        await runner.cleanup()
        await service.stop()
    if started:
        cleanup = Service(type(started[0][0].settings)(**started[0][0].settings.model_dump()))
        await cleanup.db.drop_schema()
        await cleanup.db.dispose()


class Usage:
    """Collects the router's inference.completed events from the bus (core subscription)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._nc: Any = None

    async def start(self, nats_url: str, prefix: str) -> None:
        import nats

        self._nc = await nats.connect(nats_url)

        async def collect(msg: Any) -> None:
            self.events.append(json.loads(msg.data))

        await self._nc.subscribe(f"{prefix}.aicloud.inference.completed.v1", cb=collect)

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.events) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert len(self.events) >= count, f"{len(self.events)} usage events, wanted {count}"
        return self.events

    async def close(self) -> None:
        if self._nc is not None:
            await self._nc.close()


@pytest.fixture
async def usage(nats_url: str, prefix: str) -> AsyncIterator[Usage]:
    collected = Usage()
    await collected.start(nats_url, prefix)
    yield collected
    await collected.close()
