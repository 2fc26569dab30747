"""The inference router end to end: keys, routing, streaming, limits, guardrails, usage events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.integration.router_fixtures import make_router, upstream  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def chat(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def test_a_team_key_gets_a_chat_completion(make_router: Callable[..., Any]) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/chat/completions", json=chat("gpt"),
                              headers={"authorization": f"Bearer {key}", "x-request-id": "req-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-1"
    assert "fake-gpt" in r.json()["choices"][0]["message"]["content"]
