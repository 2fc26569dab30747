"""The router's pure parts: PII guard, wire translation, SSE parsing, buckets and leases, routes
config, weighted choice and circuit breakers."""

from __future__ import annotations

import asyncio
import json
import os
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from contracts import WakeEndpoint
from contracts.pricebook import PriceBookError, load_price_book
from services.inference_router import wire
from services.inference_router.config import RouteConfigError, load_config, parse_config
from services.inference_router.endpoints import EndpointTable, Serving
from services.inference_router.guard import Findings, guard_messages, luhn, scan
from services.inference_router.limits import Limit, Limiter, MemoryBuckets, grant, refill
from services.inference_router.replicas import Sessions
from services.inference_router.requests import ApiError, parse_call
from services.inference_router.routing import Breaker, choose
from services.inference_router.wake import Waker

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


# -- PII guard ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "kind"), [
    ("write to a.b-c@mail.example.org", "email"),
    ("card 4242-4242-4242-4242 exp 12/30", "card_number"),
    ("SSN 078-05-1120", "national_id"),
    ("call +1 415 555 0134", "phone"),
    ("call (415) 555-0134", "phone"),
    ("key sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "secret"),
    ("aws AKIAIOSFODNN7EXAMPLE", "secret"),
    ("iban GB82 WEST 1234 5698 7654 32", "iban"),
])
def test_the_guard_finds_each_kind(text: str, kind: str) -> None:
    findings = Findings()
    redacted = scan(text, findings, redact=True)
    assert findings.kinds() == [kind]
    assert f"[{kind.upper()}]" in redacted


@pytest.mark.parametrize("text", [
    "order 1234 5678 9012 3456",  # 16 digits failing the Luhn check
    "at 2026-11-23 07:49:01 the job ran 3 epochs",
    "version 10.2.3, 42 GPUs, 8 x 80 GB",
    "mail me at the office",
])
def test_the_guard_leaves_ordinary_text_alone(text: str) -> None:
    findings = Findings()
    assert scan(text, findings, redact=True) == text and not findings


def test_luhn() -> None:
    assert luhn("4111 1111 1111 1111") and not luhn("4111 1111 1111 1112") and not luhn("1234")


def test_guard_walks_every_text_of_a_request_and_keeps_the_rest() -> None:
    body = {"system": "admin is root@corp.example", "input": ["x@y.io", 3],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "ssn 078-05-1120"},
                                                      {"type": "image_url", "image_url": "u"}]}]}
    findings = guard_messages(body, redact=True)
    assert findings.summary() == "2 email, 1 national_id"
    assert body["system"] == "admin is [EMAIL]" and body["input"] == ["[EMAIL]", 3]
    assert body["messages"][0]["content"][1] == {"type": "image_url", "image_url": "u"}


# -- wire formats ------------------------------------------------------------------------
def test_sse_parser_joins_split_chunks_and_named_events() -> None:
    parser = wire.SSEParser()
    assert parser.feed(b"event: ping\ndata: {\"a\"") == []
    assert parser.feed(b": 1}\r\n\r\ndata: [DONE]\n\n") == [("ping", b'{"a": 1}'), ("message", b"[DONE]")]


def test_openai_request_becomes_anthropic_and_back() -> None:
    body = {"model": "m", "max_tokens": 9, "temperature": 0.2, "stop": "END", "user": "u1",
            "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
    out = wire.openai_to_anthropic(body, "claude-x")
    assert out == {"model": "claude-x", "max_tokens": 9, "system": "sys", "temperature": 0.2,
                   "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
                   "messages": [{"role": "user", "content": "hi"}]}
    back = wire.anthropic_to_openai({**out, "stream": True}, "gpt-x")
    assert back["messages"][0] == {"role": "system", "content": "sys"}
    assert back["stream_options"] == {"include_usage": True} and back["stop"] == ["END"]


def test_anthropic_stream_renders_as_openai_chunks_with_usage() -> None:
    usage = wire.Usage()
    events = [("message_start", {"type": "message_start", "message": {"usage": {
                  "input_tokens": 5, "cache_read_input_tokens": 2}}}),
              ("content_block_delta", {"type": "content_block_delta", "delta": {"text": "Hi"}}),
              ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                                 "usage": {"output_tokens": 3}}),
              ("message_stop", {"type": "message_stop"})]
    renderer = wire.OpenAIRenderer("alias", include_usage=True)
    out = b"".join(renderer.render(wire.anthropic_part(n, json.dumps(p).encode(), usage))
                   for n, p in events).decode()
    chunks = [json.loads(line[6:]) for line in out.splitlines() if line.startswith("data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"content": "Hi"}
    assert chunks[1]["choices"][0]["finish_reason"] == "length"
    assert chunks[2]["usage"]["prompt_tokens"] == 7 and chunks[2]["usage"]["completion_tokens"] == 3
    assert chunks[2]["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert out.endswith("data: [DONE]\n\n")


def test_openai_stream_renders_as_anthropic_events_closing_with_usage() -> None:
    renderer = wire.AnthropicRenderer("alias")
    parts = [b'{"choices":[{"delta":{"content":"Yo"},"finish_reason":null}]}',
             b'{"choices":[{"delta":{},"finish_reason":"stop"}]}',
             b'{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1}}', b"[DONE]"]
    out = b"".join(renderer.render(wire.openai_part(p)) for p in parts).decode()
    names = [line[7:] for line in out.splitlines() if line.startswith("event: ")]
    assert names == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    delta = json.loads(out.split("event: message_delta\ndata: ")[1].split("\n")[0])
    assert delta["usage"] == {"input_tokens": 4, "cache_read_input_tokens": 0, "output_tokens": 1}
    assert delta["delta"]["stop_reason"] == "end_turn"


def test_whole_responses_translate_usage_and_finish() -> None:
    resp, usage = wire.anthropic_response_to_openai({"id": "1", "content": [{"type": "text", "text": "a"}],
                                                     "stop_reason": "tool_use",
                                                     "usage": {"input_tokens": 2, "output_tokens": 1}}, "m")
    assert resp["choices"][0]["finish_reason"] == "tool_calls" and usage.tokens_in == 2
    back, usage = wire.openai_response_to_anthropic(resp, "m")
    assert back["stop_reason"] == "tool_use" and back["content"] == [{"type": "text", "text": "a"}]


# -- requests -------------------------------------------------------------------------------
def test_anthropic_requests_need_max_tokens() -> None:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    with pytest.raises(ApiError, match="'max_tokens' is required"):
        parse_call(raw, operation="chat", client="anthropic", request_id="r", headers={},
                   max_tokens_cap=100)
    call = parse_call(raw, operation="chat", client="openai", request_id="r",
                      headers={"x-conversation-id": "c9"}, max_tokens_cap=100)
    assert call.conversation == "c9" and call.max_tokens is None


@pytest.mark.parametrize("user", ["u" * 257, "a\x00b"])
def test_a_user_the_usage_event_or_the_ledger_would_refuse_is_a_400_before_the_upstream(user: str) -> None:
    """Found by fuzzing: a 300-character user was a 500 once the upstream had answered."""
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "user": user}).encode()
    with pytest.raises(ApiError, match="'user' must be at most 256 characters, without NUL") as refused:
        parse_call(raw, operation="chat", client="openai", request_id="r", headers={}, max_tokens_cap=100)
    assert refused.value.status == 400 and refused.value.param == "user"
    anonymous = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode()
    with pytest.raises(ApiError, match="'user' must be"):  # the header says who, when the body does not
        parse_call(anonymous, operation="chat", client="openai", request_id="r",
                   headers={"x-aicloud-user": "u" * 257}, max_tokens_cap=100)


# -- buckets and leases ----------------------------------------------------------------------
def test_bucket_math() -> None:
    limit = Limit("k", capacity=10, rate=2)
    assert refill(0, since=100, now=102, limit=limit) == 4
    assert refill(9, since=100, now=200, limit=limit) == 10
    assert grant(3, want=5, need=1, limit=limit).granted == 3
    waiting = grant(0.5, want=5, need=1, limit=limit)
    assert waiting.granted == 0 and waiting.wait_s == pytest.approx(0.25)
    assert grant(0, want=1, need=1, limit=Limit("b", 10, 0)).wait_s == float("inf")


async def test_leases_never_admit_more_than_the_shared_bucket() -> None:
    store = MemoryBuckets()
    replicas = [Limiter(store, lease_window_s=0.5), Limiter(store, lease_window_s=0.5)]
    limit = Limit("key.rpm", capacity=10, rate=0.0001)
    admitted = 0
    for _ in range(20):
        for limiter in replicas:
            admitted += await limiter.try_take(limit, 1) == 0
    assert admitted == 10


async def test_unused_leases_go_back_and_debts_are_paid() -> None:
    store = MemoryBuckets()
    limiter = Limiter(store, lease_window_s=1.0, lease_ttl_s=0.01)
    limit = Limit("key.tpm", capacity=100, rate=50)  # slices of 50
    assert await limiter.try_take(limit, 10) == 0  # leased 50, used 10
    await asyncio.sleep(0.02)
    await limiter.return_idle()
    assert store._state["key.tpm"][0] == pytest.approx(90, abs=2)  # 100 less the 10 used
    assert await limiter.try_take(limit, 10) == 0
    limiter.settle(limit, 80)  # the request used 90, not 10: the lease is now in debt
    await limiter.return_idle(force=True)
    assert store._state["key.tpm"][0] == pytest.approx(0, abs=3)  # 90 less the 90 used


# -- routes ---------------------------------------------------------------------------------
def test_the_shipped_routes_file_loads() -> None:
    config = load_config(ROOT / "policies" / "routes.yaml")
    assert config.models["gpt-4o-mini"].fallbacks == ("claude-haiku",)


@pytest.mark.parametrize(("text", "says"), [
    ("models: {a: {targets: [{provider: nope, model: x}]}}", "unknown provider 'nope'"),
    ("providers: {p: {kind: openai, base_url: 'http://x'}}\nmodels: {a: {targets: [{provider: p, "
     "model: x}], fallbacks: [b]}}", "unknown model 'b'"),
    ("providers: {p: {kind: grpc, base_url: 'http://x'}}", "providers.p.kind"),
    ("providers: {p: {kind: openai, base_url: 'ftp://x'}}", "providers.p.base_url"),
    ("models: [1, 2", "not valid YAML"),
    ("providers: {p: {kind: openai, base_url: 'http://x'}}\nmodels: {a: {targets: [{provider: p, "
     "model: x, weight: 0}]}}", "every weight is 0"),
])
def test_bad_routes_are_refused_naming_the_field(text: str, says: str) -> None:
    with pytest.raises(RouteConfigError, match="routes") as error:
        parse_config(text)
    assert says in str(error.value)


def test_routes_take_variables_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_URL", "http://10.0.0.1:9000/v1")
    config = parse_config("providers:\n  p: {kind: openai, base_url: '${UP_URL}'}\n"
                          "  q: {kind: openai, base_url: '${NOT_SET:-http://fallback/v1}'}")
    assert config.providers["p"].base_url == "http://10.0.0.1:9000/v1"
    assert config.providers["q"].base_url == "http://fallback/v1"


def test_weighted_choice_is_sticky_and_proportional() -> None:
    route = parse_config("providers: {p: {kind: openai, base_url: 'http://x'}}\nmodels: {a: {targets: ["
                         "{provider: p, model: s, weight: 90}, {provider: p, model: c, weight: 10}]}}"
                         ).models["a"]
    picks = [choose(route, f"user-{i}").model for i in range(2000)]
    assert 150 <= picks.count("c") <= 250
    assert [choose(route, "user-7").model for _ in range(10)] == [picks[7]] * 10


def test_breaker_opens_after_failures_and_probes_once_half_open() -> None:
    breaker = Breaker(failures=2, open_s=0.05)
    breaker.record(False)
    assert breaker.allow()
    breaker.record(False)
    assert not breaker.allow() and breaker.state == "open"
    time.sleep(0.06)
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.record(True)
    assert breaker.state == "closed" and breaker.allow()


# -- platform endpoints: dormancy in either event order, sockets closed, one wake per hold ----
@pytest.mark.parametrize("scaled_first", [True, False])
async def test_scale_to_zero_keeps_an_endpoint_dormant_in_either_order(scaled_first: bool) -> None:
    async with aiohttp.ClientSession() as shared:
        table = EndpointTable(Sessions(shared))
        await table.ready("e", Serving("legal", "1", "unix:/tmp/e.sock", kind="embeddings"))
        assert table.sessions is not None and table.sessions.sockets() == {"/tmp/e.sock"}
        steps = [table.retired("e", version="1", reason="scaled_to_zero"),
                 table.scaled_to_zero("e", team="legal", kind="embeddings")]
        for step in steps[::-1] if scaled_first else steps:
            await step
        await table.retired("e", version="1", reason="rolled back")  # late, and a no-op
        endpoint, route = table.get("e"), table.routes()["e"]
        assert endpoint is not None and endpoint.dormant and route.kind == "embeddings"
        assert route.targets == () and route.teams == ("legal",) and table.sessions.sockets() == set()


async def test_a_last_version_retired_otherwise_takes_its_endpoint_along() -> None:
    async with aiohttp.ClientSession() as shared:
        table = EndpointTable(Sessions(shared))
        await table.ready("e", Serving("legal", "1", "http://a/v1", weight=90))
        await table.ready("e", Serving("legal", "2", "unix:/tmp/c.sock", ("unix:/tmp/c.sock",), 10))
        await table.retired("e", version="2", reason="canary rolled back")
        assert [(t.version, t.weight) for t in table.routes()["e"].targets] == [("1", 90)]
        assert table.provider("platform/e/2") is None and table.sessions.sockets() == set()  # type: ignore[union-attr]
        await table.retired("e", version="1", reason="failed")
        assert table.get("e") is None and table.routes() == {}


async def test_held_requests_share_one_wake_and_a_lost_wake_is_asked_again() -> None:
    asked: list[WakeEndpoint] = []

    async def publish(command: WakeEndpoint) -> None:
        asked.append(command)

    async with aiohttp.ClientSession() as shared:
        table, waker = EndpointTable(Sessions(shared)), Waker(publish, timeout_s=0.2)
        endpoint = await table.scaled_to_zero("e", team="legal", kind="chat")
        held = [asyncio.create_task(waker.until_ready("e", endpoint)) for _ in range(3)]
        await asyncio.sleep(0.01)
        await table.ready("e", Serving("legal", "1", "http://a/v1"))
        await asyncio.wait_for(asyncio.gather(*held), 1)
        assert [(c.endpoint, c.tenant) for c in asked] == [("e", "legal")]
        await table.scaled_to_zero("e", team="legal", kind="chat")
        for _ in range(2):
            with pytest.raises(ApiError, match="'e' is starting") as error:
                await waker.until_ready("e", endpoint)
            assert error.value.status == 503
        assert len(asked) == 3  # the wake-up after each lost one is asked for again


# -- prices -----------------------------------------------------------------------------------
def test_price_book_charges_tokens_and_flags_unknown_models(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    book = load_price_book(ROOT / "policies" / "pricebook.yaml")
    now = datetime(2026, 11, 23, tzinfo=UTC)
    charge = book.token_charge("gpt-4o", tokens_in=1_000_000, tokens_out=100_000,
                               tokens_cached=400_000, when=now)
    assert charge.usd == Decimal("3.00") and not charge.flagged  # 0.6*2.5 + 0.4*1.25 + 0.1*10
    unknown = book.token_charge("mystery", tokens_in=1_000_000, tokens_out=0, when=now)
    assert unknown.flagged and unknown.usd == Decimal("1.00")
    bad = tmp_path / "prices.yaml"
    bad.write_text("versions: [{effective_from: 2026-01-01, compute: {gpu_hour: {}, vcpu_hour: 0, "
                   "gb_ram_hour: 0, storage_gb_month: 0, fallback_gpu_hour: {on-demand: 1, spot: 1}}, "
                   "fallback_model: {input: -1, output: 1}}]")
    with pytest.raises(PriceBookError, match=r"versions\.0\.fallback_model\.input"):
        load_price_book(bad)


def test_the_demo_router_keys_file_is_private_from_its_first_byte_and_never_half_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.inference_router import keys as router_keys

    path = tmp_path / "run" / "router-keys.json"
    modes: list[int] = []
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        modes.append(os.stat(src).st_mode & 0o777)  # the moment before it becomes the file
        assert not path.exists() or json.loads(path.read_text())  # the old file is whole meanwhile
        real_replace(src, dst)

    monkeypatch.setattr(router_keys.os, "replace", replace)
    router_keys._write_keys(path, {"legal": "vk_a_b"})
    router_keys._write_keys(path, {"legal": "vk_a_b", "research": "vk_c_d"})
    assert modes == [0o600, 0o600]
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"legal": "vk_a_b", "research": "vk_c_d"}
    assert [p.name for p in path.parent.iterdir()] == ["router-keys.json"]  # no temporary left
