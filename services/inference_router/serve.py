"""Carrying an admitted call to an upstream and the answer back.

Retries and fallbacks happen while nothing has reached the caller: for a stream, until the
upstream's first chunk has arrived. Streams are relayed event by event with backpressure
(``write`` waits while the caller reads slowly, and the upstream is read no faster), a caller
who goes away closes the upstream connection, and an upstream that stops mid-stream ends the
caller's stream with an explicit error event, never a clean finish.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from services.inference_router import wire
from services.inference_router.gateway import Admission, Gateway, upstream_failure
from services.inference_router.providers import UpstreamError
from services.inference_router.quality import PLATFORM, answer_text
from services.inference_router.requests import Call
from services.inference_router.routing import Step
from services.inference_router.sketch import embedding_sketch
from services.inference_router.telemetry import Outcome
from services.inference_router.usage import count_tokens

JSON = "application/json"


def sticky_key(call: Call, gw: Gateway, key_id: str) -> str | None:
    route = gw.routes.route(call.alias)
    if route is None or route.sticky == "none":
        return None
    if route.sticky == "conversation" and call.conversation:
        return call.conversation
    return call.user or key_id


async def execute(gw: Gateway, call: Call, admission: Admission, outcome: Outcome,
                  request: web.Request) -> web.StreamResponse:
    last: UpstreamError | None = None
    for step in gw.routes.plan(call.alias, sticky=sticky_key(call, gw, admission.key.key_id)):
        body = gw.outbound(call, step, admission)
        outcome.pii = admission.findings.kinds()
        breaker = gw.routes.breaker(step.target)
        for attempt in range(step.route.retries + 1):
            if not breaker.allow():
                break
            try:
                response = await _try(call, step, body, outcome, request)
            except UpstreamError as error:
                breaker.record(error.status in (400, 413, 422))
                last = error
                if error.status in (400, 413, 422):
                    raise upstream_failure(call.alias, error) from None
                if not error.retryable:
                    break
                if attempt < step.route.retries:
                    await asyncio.sleep(min(error.retry_after or 0, 2.0)
                                        or step.route.backoff_s * 2**attempt)
                continue
            breaker.record(True)
            return response
    raise upstream_failure(call.alias, last)


async def _try(call: Call, step: Step, body: dict[str, Any], outcome: Outcome,
               request: web.Request) -> web.StreamResponse:
    operation = call.operation if call.operation != "chat" else (
        "messages" if step.provider.format == "anthropic" else "chat")
    if call.operation != "chat" and step.provider.format == "anthropic":
        raise UpstreamError(404, f"{step.provider.name} does not serve {call.operation}")
    timeout = step.target.timeout_s or step.provider.timeout_s
    outcome.target, outcome.version = step.target.name, step.target.version  # also when it refuses
    upstream = await step.provider.open(operation, body, stream=call.stream, timeout_s=timeout)
    outcome.provider, outcome.response_model = step.provider.gen_ai_name, step.target.model
    if call.stream:
        first = await _first_chunk(step, upstream)
        return await _relay(call, step, upstream, first, outcome, request)
    try:
        raw = await upstream.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(502, f"{step.provider.name} broke off its answer: {type(exc).__name__}") \
            from None
    finally:
        upstream.release()
    return _whole(call, step, raw, outcome)


async def _first_chunk(step: Step, upstream: aiohttp.ClientResponse) -> bytes:
    try:
        first = await upstream.content.readany()
    except (aiohttp.ClientError, TimeoutError) as exc:
        upstream.close()
        raise UpstreamError(502, f"{step.provider.name} broke off before its first chunk: "
                            f"{type(exc).__name__}") from None
    if not first:
        upstream.release()
        raise UpstreamError(502, f"{step.provider.name} sent an empty stream")
    return first


def _whole(call: Call, step: Step, raw: bytes, outcome: Outcome) -> web.Response:
    try:
        payload = orjson.loads(raw)
        if not isinstance(payload, dict):
            raise ValueError("not an object")
    except ValueError:
        raise UpstreamError(502, f"{step.provider.name} answered with a body that is not a "
                            "JSON object") from None
    outcome.first_chunk = time.perf_counter()
    if step.provider.format == "anthropic" and call.client == "openai":
        payload, outcome.usage = wire.anthropic_response_to_openai(payload, step.target.model)
        raw = orjson.dumps(payload)
    elif step.provider.format == "openai" and call.client == "anthropic":
        payload, outcome.usage = wire.openai_response_to_anthropic(payload, step.target.model)
        raw = orjson.dumps(payload)
    elif step.provider.format == "anthropic":
        outcome.usage.add_anthropic(payload.get("usage"))
    else:
        outcome.usage = wire.Usage.of_openai(payload.get("usage"))
    if not outcome.usage.reported and call.operation != "predict":  # predictions count no tokens
        outcome.usage.tokens_in = count_tokens(call.prompt_text())
    choices = payload.get("choices") or [{}]
    outcome.finish = payload.get("stop_reason") or (choices[0] or {}).get("finish_reason")
    if outcome.sampled:
        outcome.answer = answer_text(payload)
    if call.operation == "embeddings" and outcome.target.startswith(PLATFORM):
        outcome.embedding_sketch = embedding_sketch(payload)
    return web.Response(body=raw, content_type=JSON, headers={"x-request-id": call.request_id})


async def _relay(call: Call, step: Step, upstream: aiohttp.ClientResponse, first: bytes,
                 outcome: Outcome, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                           "cache-control": "no-cache",
                                           "x-request-id": call.request_id})
    await response.prepare(request)
    relay = _Relay(call, step, outcome)
    try:
        chunk = first
        while chunk and not relay.done:
            out = relay.feed(chunk)
            if out:
                if outcome.first_chunk is None:
                    outcome.first_chunk = time.perf_counter()
                await response.write(out)
            if relay.done or relay.error:
                break
            chunk = await upstream.content.readany()
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
        relay.error = relay.error or f"{step.provider.name} broke off the stream: {type(exc).__name__}"
    except BaseException:
        upstream.close()  # the caller went away: stop the upstream generating for nobody
        relay.settle_usage()
        raise
    upstream.release()
    relay.settle_usage()
    if not relay.done:
        outcome.status = "error"
        outcome.error = relay.error or f"{step.provider.name} ended the stream before it finished"
        await response.write(relay.renderer.error(f"the stream was interrupted: {outcome.error}; "
                                                  "the answer is incomplete"))
    await response.write_eof()
    return response


class _Relay:
    def __init__(self, call: Call, step: Step, outcome: Outcome) -> None:
        self.call, self.step, self.outcome = call, step, outcome
        self.parser = wire.SSEParser()
        self.same = step.provider.format == call.client
        self.renderer: wire.OpenAIRenderer | wire.AnthropicRenderer = (
            wire.OpenAIRenderer(step.target.model, call.include_usage) if call.client == "openai"
            else wire.AnthropicRenderer(step.target.model))
        self.anthropic_usage = wire.Usage()
        self.text: list[str] = []
        self.done = False
        self.error: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        out = []
        for name, data in self.parser.feed(chunk):
            try:
                part = (wire.anthropic_part(name, data, self.anthropic_usage)
                        if self.step.provider.format == "anthropic" else wire.openai_part(data))
            except (ValueError, AttributeError):
                self.error = f"{self.step.provider.name} sent an unreadable stream event"
                break
            if part.error:
                self.error = f"{self.step.provider.name} reported: {part.error}"
                break
            self.done = self.done or part.done
            if part.usage is not None:
                self.outcome.usage = part.usage
            if part.finish:
                self.outcome.finish = part.finish
            self.text.append(part.text)
            out.append(self._passthrough(name, data, part) if self.same else self.renderer.render(part))
        return b"".join(out)

    def _passthrough(self, name: str, data: bytes, part: wire.Part) -> bytes:
        if self.call.client == "anthropic":
            return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
        usage_only = part.usage is not None and not part.text and not part.finish and not part.done
        if usage_only and not self.call.include_usage:
            return b""  # asked for by the router to count tokens, not by the caller
        return b"data: " + data + b"\n\n"

    def settle_usage(self) -> None:
        usage = self.outcome.usage
        if not usage.reported:  # the upstream gave no usage: count it ourselves
            usage.tokens_in = count_tokens(self.call.prompt_text())
            usage.tokens_out = count_tokens("".join(self.text))
