"""The inference router end to end: keys, routing, streaming, limits, guardrails, usage events.

Real NATS (JetStream and KV) and Postgres; the only fake is the external provider, which
speaks OpenAI's and Anthropic's wire formats.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import nats
import pytest
import yaml
from nats.js.api import KeyValueConfig

from aicloud.local.fake_llm import FakeLlm
from contracts import BudgetExhausted, EndpointReady, EndpointRetired
from services.inference_router.limits import KvBuckets, Limit
from tests.integration.router_fixtures import UPSTREAM_KEY, Upstream, Usage, routes_yaml, serve

pytestmark = pytest.mark.integration


def chat(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def sse(body: str) -> list[dict[str, Any] | str]:
    events: list[dict[str, Any] | str] = []
    for line in body.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_a_team_key_gets_a_chat_completion_and_a_usage_event(
        make_router: Callable[..., Any], usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/chat/completions", json=chat("gpt"),
                              headers={**bearer(key), "x-request-id": "req-1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-1"
    assert "fake-gpt" in r.json()["choices"][0]["message"]["content"]
    [event] = await usage.wait_for(1)
    assert event["request_id"] == "req-1" and event["tenant"] == "legal"
    assert event["status"] == "ok" and event["target"] == "openai/fake-gpt"
    assert event["tokens_in"] == 1 and event["tokens_out"] == 10
    # fake-gpt is priced like gpt-4o-mini: 0.15 in, 0.60 out per 1M tokens
    assert Decimal(event["cost_usd"]) == Decimal("0.00000615")
    assert key not in json.dumps(event)


async def test_streaming_passes_through_with_usage_and_counts_it(
        make_router: Callable[..., Any], usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        plain = await client.post("/v1/chat/completions", json=chat("gpt", stream=True),
                                  headers=bearer(key))
        with_usage = await client.post(
            "/v1/chat/completions", headers=bearer(key),
            json=chat("gpt", stream=True, stream_options={"include_usage": True}))
    events = sse(plain.text)
    assert plain.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]
                   if isinstance(e, dict) and e["choices"])
    assert text == "The answer is forty two and it came from fake-gpt"
    # the router asked upstream for usage to count tokens; the caller who did not ask gets none
    assert not any(isinstance(e, dict) and e.get("usage") for e in events)
    assert any(isinstance(e, dict) and e.get("usage") for e in sse(with_usage.text))
    found = await usage.wait_for(2)
    assert all(e["stream"] and e["tokens_out"] == 10 and e["ttft_ms"] is not None for e in found)


async def test_anthropic_through_the_openai_shape_and_natively(
        make_router: Callable[..., Any], upstream: Upstream) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        whole = await client.post("/v1/chat/completions", headers=bearer(key), json={
            "model": "claude", "max_tokens": 50,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
        streamed = await client.post("/v1/chat/completions", headers=bearer(key), json=chat(
            "claude", stream=True, stream_options={"include_usage": True}))
        native = await client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
        reverse = await client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "gpt", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 10
    sent = upstream.received()[0]
    assert sent["path"] == "/v1/messages" and sent["body"]["system"] == "be brief"
    assert sent["body"]["max_tokens"] == 50
    chunks = sse(streamed.text)
    assert chunks[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if isinstance(c, dict) and c["choices"]).endswith("fake-claude")
    assert [c["usage"]["completion_tokens"] for c in chunks if isinstance(c, dict) and c.get("usage")] == [10]
    assert native.json()["type"] == "message" and native.json()["content"][0]["text"].endswith("fake-claude")
    assert "event: message_stop" in reverse.text and "fake-gpt" in reverse.text
    assert upstream.received()[-1]["path"] == "/v1/chat/completions"


async def test_canary_split_is_weighted_and_sticky_per_user(make_router: Callable[..., Any]) -> None:
    router = await make_router()
    key = await router.key()
    served: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=router.url) as client:
        for i in range(200):
            r = await client.post("/v1/chat/completions", headers=bearer(key),
                                  json=chat("canaried", user=f"user-{i}"))
            served[f"user-{i}"] = r.json()["model"]
        again = [(await client.post("/v1/chat/completions", headers=bearer(key),
                                    json=chat("canaried", user=f"user-{i}"))).json()["model"]
                 for i in range(20)]
    canary = sum(1 for m in served.values() if m == "fake-gpt-canary")
    assert 20 <= canary <= 60, f"{canary} of 200 on the 20 % canary"
    assert again == [served[f"user-{i}"] for i in range(20)]


async def test_fallback_on_upstream_errors_and_the_circuit_opens(
        make_router: Callable[..., Any], upstream: Upstream, usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        first = await client.post("/v1/chat/completions", json=chat("flaky"), headers=bearer(key))
        calls_after_first = len(upstream.received())
        for _ in range(3):
            await client.post("/v1/chat/completions", json=chat("flaky"), headers=bearer(key))
        routes = await client.get("/admin/routes", headers=bearer("admin-token-for-tests"))
    assert first.status_code == 200 and first.json()["model"] == "fake-claude"
    assert calls_after_first == 3  # fake-gpt-fail twice (one retry), then fake-claude
    assert routes.json()["circuits"]["openai/fake-gpt-fail"] == "open"
    # with the circuit open the failing target is skipped: only claude is called
    assert [r["body"]["model"] for r in upstream.received()[-1:]] == ["fake-claude"]
    events = await usage.wait_for(4)
    assert {e["target"] for e in events} == {"anthropic/fake-claude"}


async def test_pii_is_redacted_before_an_external_provider_and_blocked_where_asked(
        make_router: Callable[..., Any], upstream: Upstream, usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    secret = "mail jane.doe@example.com, card 4111 1111 1111 1111, order 1234 5678 9012 3456"
    async with httpx.AsyncClient(base_url=router.url) as client:
        ok = await client.post("/v1/chat/completions", json=chat("gpt", secret), headers=bearer(key))
        blocked = await client.post("/v1/chat/completions", json=chat("strict", secret),
                                    headers=bearer(key))
        inside = await client.post("/v1/chat/completions", json=chat("inside", secret),
                                   headers=bearer(key))
    assert ok.status_code == 200
    sent = upstream.received()
    external = sent[0]["body"]["messages"][0]["content"]
    assert "jane.doe@example.com" not in external and "4111" not in external
    assert "[EMAIL]" in external and "[CARD_NUMBER]" in external
    assert "1234 5678 9012 3456" in external  # fails the Luhn check: not a card
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == "pii_blocked"
    assert "1 email" in blocked.json()["error"]["message"]
    assert "jane.doe" not in blocked.text
    assert inside.status_code == 200 and "jane.doe@example.com" in sent[-1]["body"]["messages"][0]["content"]
    assert len(sent) == 2  # the blocked prompt never left
    events = await usage.wait_for(3)
    assert sorted(e["pii_findings"] for e in events if e["pii_findings"])[0] == ["card_number", "email"]
    assert all("jane" not in json.dumps(e) for e in events)


async def test_rate_limit_answers_429_with_retry_after(make_router: Callable[..., Any]) -> None:
    router = await make_router(queue_timeout_s=0)
    key = await router.key(rpm=3)
    async with httpx.AsyncClient(base_url=router.url) as client:
        codes = [(await client.post("/v1/chat/completions", json=chat("gpt"), headers=bearer(key)))
                 for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    assert int(codes[-1].headers["retry-after"]) >= 1
    assert "RPM limit (3/min)" in codes[-1].json()["error"]["message"]


async def test_a_request_over_the_rate_waits_briefly_instead_of_failing(
        make_router: Callable[..., Any]) -> None:
    router = await make_router(queue_timeout_s=2.0)
    key = await router.key(rpm=120)  # 2 per second, 120 at once
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        burst = await asyncio.gather(*(client.post("/v1/chat/completions", json=chat("gpt"),
                                                   headers=bearer(key)) for _ in range(121)))
    assert all(r.status_code == 200 for r in burst), {r.status_code for r in burst}


async def test_exhausted_team_budget_answers_402_naming_it(
        make_router: Callable[..., Any], nats_url: str, prefix: str) -> None:
    router = await make_router()
    key, research = await router.key(), await router.key(team="research")
    period = datetime.now(UTC).strftime("%Y-%m")
    nc = await nats.connect(nats_url)
    event = BudgetExhausted(tenant="legal", budget_id="legal-monthly", period=period, action="block",
                            spent_usd=Decimal("500.12"), amount_usd=Decimal("500"))
    await nc.jetstream().publish(f"{prefix}.{event.SUBJECT}", event.model_dump_json().encode())
    await nc.close()
    async with httpx.AsyncClient(base_url=router.url) as client:
        for _ in range(100):
            r = await client.post("/v1/chat/completions", json=chat("gpt"), headers=bearer(key))
            if r.status_code == 402:
                break
            await asyncio.sleep(0.1)
        other_team = await client.post("/v1/chat/completions", json=chat("gpt"), headers=bearer(research))
    assert r.status_code == 402
    assert "legal-monthly" in r.json()["error"]["message"] and "$500.12" in r.json()["error"]["message"]
    assert other_team.status_code == 200  # the block is the exhausted team's only


async def test_key_budget_stops_a_key_that_spent_it(make_router: Callable[..., Any]) -> None:
    router = await make_router()
    key = await router.key(budget_usd="0.01")
    big = chat("gpt", "word " * 20_000)  # ~20k input tokens at $0.15/1M: $0.003 a request
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        codes = [(await client.post("/v1/chat/completions", json=big, headers=bearer(key))).status_code
                 for _ in range(6)]
    assert codes[:3] == [200, 200, 200] and codes[-1] == 402


async def test_upstream_cut_mid_stream_ends_with_an_error_event(
        make_router: Callable[..., Any], usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        cut = await client.post("/v1/chat/completions", json=chat("cutting", stream=True),
                                headers=bearer(key))
        cut_claude = await client.post("/v1/messages", headers={"x-api-key": key}, json={
            "model": "cutting-claude", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})
    events = sse(cut.text)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "stream_interrupted"  # type: ignore[index]
    assert "event: error" in cut_claude.text and "message_stop" not in cut_claude.text
    found = await usage.wait_for(2)
    assert {e["status"] for e in found} == {"error"}


async def test_a_stream_without_upstream_usage_is_counted_with_a_tokenizer(
        make_router: Callable[..., Any], usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/chat/completions", json=chat("nousage", "count me please",
                                                                 stream=True), headers=bearer(key))
    assert sse(r.text)[-1] == "[DONE]"
    [event] = await usage.wait_for(1)
    assert event["tokens_in"] == 3  # cl100k: "count", " me", " please"
    # cl100k: "The", " answer", ..., " from", " fake", "-g", "pt", "-n", "ous", "age"
    assert event["tokens_out"] == 15


async def test_a_caller_that_goes_away_cancels_the_upstream(
        make_router: Callable[..., Any], upstream: Upstream, usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client, client.stream(
            "POST", "/v1/chat/completions", json=chat("slow", stream=True), headers=bearer(key)) as r:
        async for _ in r.aiter_bytes():
            break  # read one chunk, then hang up
    for _ in range(100):
        if upstream.fake.stats["streams_abandoned"]:
            break
        await asyncio.sleep(0.05)
    stats = upstream.fake.stats
    assert (stats["streams_started"], stats["streams_finished"], stats["streams_abandoned"]) == (1, 0, 1)
    [event] = await usage.wait_for(1)
    assert event["status"] == "cancelled"


async def test_models_lists_what_the_key_may_use(make_router: Callable[..., Any]) -> None:
    router = await make_router()
    narrow = await router.key(models=["gpt", "embed"])
    async with httpx.AsyncClient(base_url=router.url) as client:
        listed = await client.get("/v1/models", headers=bearer(narrow))
        refused = await client.post("/v1/chat/completions", json=chat("claude"), headers=bearer(narrow))
        embedded = await client.post("/v1/embeddings", json={"model": "embed", "input": ["a", "b"]},
                                     headers=bearer(narrow))
    assert [m["id"] for m in listed.json()["data"]] == ["embed", "gpt"]
    assert refused.status_code == 403 and "may use: gpt, embed" in refused.json()["error"]["message"]
    assert embedded.status_code == 200 and len(embedded.json()["data"]) == 2


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "'model' is required"),
    (json.dumps(chat("no-such-model")).encode(), 404, "does not exist"),
    (json.dumps({"model": "gpt", "messages": []}).encode(), 400, "non-empty list"),
    (json.dumps({"model": "gpt", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400,
     "messages[0] needs a 'role'"),
    (json.dumps(chat("gpt", max_tokens=10**9)).encode(), 400, "more than the 32768"),
    (json.dumps(chat("gpt", max_tokens=-1)).encode(), 400, "positive integer"),
    (json.dumps(chat("gpt", stream="yes")).encode(), 400, "'stream' must be true or false"),
    (json.dumps(chat("embed")).encode(), 400, "is a embeddings model"),
    (json.dumps(chat("garbage")).encode(), 502, "not a JSON object"),
    (b"x" * (5 * 1024 * 1024), 413, "larger than"),
])
async def test_bad_input_gets_an_openai_style_error(
        make_router: Callable[..., Any], body: bytes, status: int, says: str) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/chat/completions", content=body,
                              headers={**bearer(key), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert says in r.json()["error"]["message"]
    assert UPSTREAM_KEY not in r.text and "Traceback" not in r.text


async def test_invalid_and_revoked_keys_get_the_same_401(make_router: Callable[..., Any]) -> None:
    router = await make_router(key_cache_ttl_s=0.1)
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        key_id = key.split("_")[1]
        revoked = await client.delete(f"/admin/keys/{key_id}", headers=bearer("admin-token-for-tests"))
        await asyncio.sleep(0.2)
        answers = [await client.post("/v1/chat/completions", json=chat("gpt"), headers=h)
                   for h in (bearer(key), bearer("vk_00000000_" + "x" * 43), {}, bearer("sk-nope"))]
        admin = await client.get("/admin/keys", headers=bearer("wrong"))
    assert revoked.status_code == 200
    assert {r.status_code for r in answers} == {401}
    assert len({r.json()["error"]["message"] for r in answers}) == 1
    assert admin.status_code == 401


async def test_upstream_rejecting_the_routers_credential_never_leaks_it(
        make_router: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_KEY", "sk-wrong-credential-abcdefghijklmnop")
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/chat/completions", json=chat("gpt"), headers=bearer(key))
    assert r.status_code == 502 and "answered 401" in r.json()["error"]["message"]
    assert "sk-wrong" not in r.text


async def test_routes_reload_when_the_file_changes_and_bad_edits_are_refused(
        make_router: Callable[..., Any]) -> None:
    router = await make_router()
    key = await router.key()
    original = router.routes_file.read_text()
    router.routes_file.write_text(original + "  added:\n    targets: [{provider: openai, model: fake-gpt}]\n")
    async with httpx.AsyncClient(base_url=router.url) as client:
        for _ in range(50):
            r = await client.post("/v1/chat/completions", json=chat("added"), headers=bearer(key))
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200
        router.routes_file.write_text(original + "  broken:\n    targets: [{provider: nowhere, model: x}]\n")
        await asyncio.sleep(0.6)
        still = await client.post("/v1/chat/completions", json=chat("added"), headers=bearer(key))
    assert still.status_code == 200  # the bad edit was refused; the last good routes serve


async def test_admin_routes_reach_every_replica(make_router: Callable[..., Any]) -> None:
    one, two = await make_router(), await make_router()
    key = await one.key()
    async with httpx.AsyncClient() as client:
        put = await client.put(f"{one.url}/admin/routes/team-gpt", headers=bearer("admin-token-for-tests"),
                               json={"targets": [{"provider": "openai", "model": "fake-gpt-canary"}]})
        bad = await client.put(f"{one.url}/admin/routes/bad", headers=bearer("admin-token-for-tests"),
                               json={"targets": [{"provider": "nowhere", "model": "x"}]})
        for _ in range(50):
            r = await client.post(f"{two.url}/v1/chat/completions", json=chat("team-gpt"),
                                  headers=bearer(key))
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
    assert put.status_code == 200
    assert bad.status_code == 400 and "unknown providers ['nowhere']" in bad.json()["error"]["message"]
    assert r.status_code == 200 and r.json()["model"] == "fake-gpt-canary"


async def test_two_replicas_share_one_rate_limit(make_router: Callable[..., Any]) -> None:
    """LiteLLM checks TPM/RPM per replica; here the combined admitted rate holds the limit."""
    one, two = await make_router(queue_timeout_s=0), await make_router(queue_timeout_s=0)
    rpm = 600  # 10 per second
    key = await one.key(rpm=rpm)
    loop = asyncio.get_running_loop()

    async def hammer(url: str, client: httpx.AsyncClient, until: float, admitted: list[float]) -> None:
        while loop.time() < until:
            r = await client.post(f"{url}/v1/chat/completions", json=chat("gpt"), headers=bearer(key))
            if r.status_code == 200:
                admitted.append(loop.time())
            elif r.status_code != 429:
                raise AssertionError(r.text)

    async with httpx.AsyncClient(timeout=10) as client:
        # drain the burst (a minute's worth) until the first refusal, then measure the steady rate
        drain_until = loop.time() + 60
        while loop.time() < drain_until:
            if (await client.post(f"{one.url}/v1/chat/completions", json=chat("gpt"),
                                  headers=bearer(key))).status_code == 429:
                break
        admitted: list[float] = []
        window = 8.0
        until = loop.time() + window
        await asyncio.gather(*(hammer(url, client, until, admitted)
                               for url in (one.url, two.url) for _ in range(4)))
    rate = len(admitted) / window
    assert abs(rate - rpm / 60) <= 0.05 * rpm / 60, f"{rate:.2f}/s admitted against {rpm / 60}/s"


async def test_fuzzing_from_the_openapi_spec_finds_no_server_error(
        make_router: Callable[..., Any], upstream: Upstream, tmp_path: Any) -> None:
    """Schemathesis generates valid and invalid requests from /openapi.json; every answer must be
    a documented status with a documented (JSON error) body, never a 500."""
    healthy = tmp_path / "healthy-routes.yaml"
    config = yaml.safe_load(routes_yaml(upstream.url))
    config["models"] = {k: v for k, v in config["models"].items()
                        if k in ("gpt", "claude", "nousage", "embed", "canaried", "strict", "inside")}
    healthy.write_text(yaml.safe_dump(config))
    router = await make_router(routes_file=healthy)
    key = await router.key()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "run", f"{router.url}/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,response_schema_conformance,"
        "content_type_conformance", "--max-examples", "100", "--generation-deterministic",
        "-H", f"Authorization: Bearer {key}", "--suppress-health-check", "all",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    output, _ = await process.communicate()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report[-4000:]
    assert "Operations:       5 selected / 5 total" in report and " passed" in report, report


async def test_platform_endpoints_come_and_go_with_their_events(
        make_router: Callable[..., Any], upstream: Upstream, nats_url: str, prefix: str) -> None:
    router = await make_router()
    legal, research = await router.key(), await router.key(team="research")
    model_server, url = await serve(FakeLlm().app())  # a platform endpoint: no provider key
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    ready = EndpointReady(tenant="legal", endpoint="clause-risk", model="clause-risk", version="3",
                          url=f"{url}/v1")
    await js.publish(f"{prefix}.{ready.SUBJECT}", ready.model_dump_json().encode())
    async with httpx.AsyncClient(base_url=router.url) as client:
        for _ in range(100):
            r = await client.post("/v1/chat/completions", json=chat("clause-risk"), headers=bearer(legal))
            if r.status_code != 404:
                break
            await asyncio.sleep(0.1)
        other = await client.post("/v1/chat/completions", json=chat("clause-risk"), headers=bearer(research))
        gone = EndpointRetired(tenant="legal", endpoint="clause-risk", version="3")
        await js.publish(f"{prefix}.{gone.SUBJECT}", gone.model_dump_json().encode())
        for _ in range(100):
            after = await client.post("/v1/chat/completions", json=chat("clause-risk"), headers=bearer(legal))
            if after.status_code == 404:
                break
            await asyncio.sleep(0.1)
    await nc.close()
    await model_server.cleanup()
    assert r.status_code == 200, r.text
    assert other.status_code == 404  # another team's endpoint is invisible
    assert after.status_code == 404


async def test_each_request_is_a_genai_span_and_a_prometheus_series(
        make_router: Callable[..., Any], tracing: Any, prefix: str) -> None:
    router = await make_router()
    key = await router.key()
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=router.url) as client:
        await client.post("/v1/chat/completions", json=chat("gpt", stream=True),
                          headers={**bearer(key), "traceparent": traceparent, "x-request-id": prefix})
        metrics = (await client.get("/metrics")).text
    from opentelemetry import trace as otel

    otel.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    spans = [json.loads(line) for line in tracing.read_text().splitlines()]
    span = next(s for s in spans if s["attributes"].get("aicloud.request_id") == prefix)
    assert span["name"] == "chat gpt"
    assert span["trace_id"] == "0af7651916cd43dd8448eb211c80319c"  # continues the caller's trace
    attributes = span["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt"
    assert attributes["gen_ai.response.model"] == "fake-gpt"
    assert attributes["gen_ai.usage.output_tokens"] == 10
    assert attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert ('gen_ai_client_token_usage_count{gen_ai_token_type="output",model="gpt",team="legal"} 1.0'
            in metrics)
    assert ('gen_ai_client_operation_duration_seconds_count{model="gpt",status="ok",team="legal"} 1.0'
            in metrics)


async def test_contended_shared_bucket_grants_exactly_and_never_gives_up(nats_url: str, prefix: str) -> None:
    """Eight contenders on one KV bucket: compare-and-set conflicts are retried with jitter,
    and the total granted is the burst plus the refill, not a token more."""
    nc = await nats.connect(nats_url)
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=f"{prefix}_limits", history=1))
    limit = Limit("key.rpm", capacity=300, rate=10)
    granted = 0.0
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def contend(buckets: KvBuckets) -> None:
        nonlocal granted
        while loop.time() < start + 3:
            got = await buckets.take(limit, want=1, need=1)
            granted += got.granted

    await asyncio.gather(*(contend(KvBuckets(kv)) for _ in range(8)))
    elapsed = loop.time() - start
    await nc.jetstream().delete_key_value(f"{prefix}_limits")
    await nc.close()
    assert 300 + 10 * (elapsed - 0.5) <= granted <= 300 + 10 * elapsed + 1


async def test_a_target_past_its_timeout_falls_back(make_router: Callable[..., Any], usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url, timeout=10) as client:
        started = asyncio.get_running_loop().time()
        r = await client.post("/v1/chat/completions", json=chat("hanging"), headers=bearer(key))
        took = asyncio.get_running_loop().time() - started
    assert r.status_code == 200 and r.json()["model"] == "fake-claude"
    assert took < 2  # the hanging target was given 0.3 s, not its 5 s
    [event] = await usage.wait_for(1)
    assert event["target"] == "anthropic/fake-claude"


async def test_a_slow_reader_slows_the_upstream_and_memory_stays_bounded(
        make_router: Callable[..., Any], upstream: Upstream) -> None:
    """64 MiB streamed to a caller who stops reading: the upstream stalls after what the
    socket buffers hold, instead of the router buffering the rest in memory."""
    router = await make_router()
    key = await router.key()
    host, port = router.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps(chat("big", stream=True)).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    await reader.read(65536)  # the caller reads the first bytes, then stops reading
    for _ in range(40):
        sent = upstream.fake.stats["bytes_streamed"]
        await asyncio.sleep(0.25)
        if upstream.fake.stats["bytes_streamed"] == sent:
            break  # the upstream is blocked: backpressure reached it
    stalled_at = upstream.fake.stats["bytes_streamed"]
    await asyncio.sleep(0.5)
    assert upstream.fake.stats["bytes_streamed"] == stalled_at
    assert stalled_at < 40 * 2**20, f"{stalled_at / 2**20:.1f} MiB left the upstream"
    total = 0
    while chunk := await asyncio.wait_for(reader.read(2**20), 10):  # the caller reads on: all arrives
        total += len(chunk)
        if chunk.endswith(b"0\r\n\r\n"):
            break
    writer.close()
    assert upstream.fake.stats["streams_finished"] == 1
    assert total > 64 * 2**20


async def test_every_request_lands_in_the_cost_ledger(
        make_router: Callable[..., Any], service_env: dict[str, str], prefix: str) -> None:
    from sqlalchemy import text

    from services.cost_ledger.app import build as build_ledger
    from services.cost_ledger.settings import CostLedgerSettings

    ledger = build_ledger(CostLedgerSettings(**service_env, db_schema=f"{prefix}_ledger"))
    await ledger.start()
    router = await make_router()
    key = await router.key()
    async with httpx.AsyncClient(base_url=router.url) as client:
        ids = [f"ledger-{i}" for i in range(5)]
        for request_id in ids:
            await client.post("/v1/chat/completions", json=chat("gpt", stream=request_id.endswith("1")),
                              headers={**bearer(key), "x-request-id": request_id})
        await client.post("/v1/chat/completions", json=chat("no-such-model"), headers=bearer(key))
    for _ in range(100):
        async with ledger.db.transaction() as session:
            rows = (await session.execute(text("SELECT count(*) FROM ledger_entries"))).scalar_one()
        if rows >= 6:
            break
        await asyncio.sleep(0.1)
    await ledger.stop()
    await ledger.db.drop_schema()
    await ledger.db.dispose()
    assert rows == 6  # five answered, one refused: each once


async def test_requests_for_models_that_do_not_exist_count_under_one_bounded_name(
        make_router: Callable[..., Any], usage: Usage) -> None:
    """A caller typing model names cannot grow a metric label, a bill row or a dashboard entry:
    every request for a model with no route is counted, billed and traced as '(unknown)'."""
    router = await make_router()
    key = await router.key()
    typed = [f"made-up-{n}" for n in range(5)]
    async with httpx.AsyncClient(base_url=router.url) as client:
        for name in typed:
            r = await client.post("/v1/chat/completions", json=chat(name), headers=bearer(key))
            assert r.status_code == 404 and f"the model '{name}' does not exist" in r.text
        known = await client.post("/v1/chat/completions", json=chat("gpt"), headers=bearer(key))
        assert known.status_code == 200
        metrics = (await client.get("/metrics")).text
    events = await usage.wait_for(6)
    assert sorted(e["model"] for e in events) == ["(unknown)"] * 5 + ["gpt"]
    assert all(e["status"] == "rejected" for e in events if e["model"] == "(unknown)")
    assert not any(name in metrics for name in typed)
    assert 'model="(unknown)"' in metrics and 'model="gpt"' in metrics


async def test_a_route_name_that_is_not_an_alias_is_refused(make_router: Callable[..., Any]) -> None:
    router = await make_router()
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.put("/admin/routes/(unknown)", headers=bearer("admin-token-for-tests"),
                             json={"targets": [{"provider": "openai", "model": "fake-gpt"}]})
    assert r.status_code == 400 and "is not a model alias" in r.json()["error"]["message"]
