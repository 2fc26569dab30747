"""The demo's model-gateway part: one router for every model, keys, limits and guardrails."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import nats

from aicloud.local.stack import Stack
from aicloud.output import console, fail


def walk(stack: Stack, urls: dict[str, str], team: str) -> None:
    router, fake = urls.get("inference-router"), urls.get("fake-llm")
    keys_file = stack.home / "router-keys.json"
    if router is None or not keys_file.exists():
        raise fail("the inference router is not running", hint="`aicloud dev logs inference-router`")
    key = json.loads(keys_file.read_text())[team]
    before = asyncio.run(_usage_events(urls["nats"], stack.nats_login()))
    with httpx.Client(base_url=router, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        _stream(http, fake)
        served = http.post("/v1/chat/completions", json=_chat("flaky-gpt", "hello")).json()
        console.print(f"   flaky-gpt fails upstream -> fell back, served by [bold]{served['model']}[/]")
        canary = Counter(http.post("/v1/chat/completions",
                                   json=_chat("gpt-4o-mini", "hi", user=f"dev-{i}")).json()["model"]
                         for i in range(40))
        console.print(f"   gpt-4o-mini for 40 users (90/10 canary, sticky per user): {dict(canary)}")
        _limited(http, stack)
    time.sleep(0.5)  # usage is published just after each answer, off the request path
    after = asyncio.run(_usage_events(urls["nats"], stack.nats_login()))
    console.print(f"   aicloud.inference.completed.v1 events for the above: {after - before} "
                  "(team, key, tokens, latency, cost; the ledger charges them)")


def _stream(http: httpx.Client, fake: str | None) -> None:
    console.print("   curl $ROUTER/v1/chat/completions -H 'Authorization: Bearer $KEY' "
                  "-d '{\"model\": \"gpt-4o-mini\", \"stream\": true, ...}'")
    prompt = "Summarise the clause for jane.doe@example.com"
    text = []
    with http.stream("POST", "/v1/chat/completions",
                     json=_chat("gpt-4o-mini", prompt, stream=True)) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                text += [c["delta"].get("content") or "" for c in chunk["choices"]]
    console.print(f"   streamed: [bold]{''.join(text)}[/]")
    if fake is not None:
        sent = httpx.get(f"{fake}/_requests").json()[-1]["body"]["messages"][0]["content"]
        console.print(f"   the provider received: {sent!r} (PII guard: redact)")


def _limited(http: httpx.Client, stack: Stack) -> None:
    admin = (stack.home / "run" / "router-admin-token").read_text().strip()
    created = http.post("/admin/keys", headers={"authorization": f"Bearer {admin}"},
                        json={"team": "research", "name": "demo-limited", "rpm": 2}).json()
    codes = []
    for _ in range(3):
        r = http.post("/v1/chat/completions", json=_chat("gpt-4o-mini", "hi"),
                      headers={"authorization": f"Bearer {created['key']}"})
        codes.append(r.status_code)
    message = r.json()["error"]["message"] if r.status_code != 200 else ""
    console.print(f"   a research key with rpm=2: {codes} -> {message}")


async def _usage_events(nats_url: str, login: dict[str, str]) -> int:
    nc = await nats.connect(nats_url, user=login.get("user"), password=login.get("password"))
    try:
        info = await nc.jetstream().stream_info("AICLOUD_INFERENCE")
        return int(info.state.messages)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


def _chat(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}
