"""A fake of the external model providers (OpenAI and Anthropic) for the local stack and tests.

It speaks their real wire formats, SSE streaming and usage included, and misbehaves on request
through the model name, so the router's fallbacks and stream handling can be shown for real:

  ...-fail      answers 500            ...-429      answers 429 with retry-after
  ...-cut       streams, then drops the connection mid-answer
  ...-nousage   streams without a usage chunk (the router must count tokens itself)
  ...-slow      streams one chunk every 50 ms (for disconnect tests)
  ...-garbage   answers 200 with a body that is not JSON
  ...-hang      waits 5 s before answering (for timeouts)
  ...-big       streams 64 MiB in 4 KiB chunks (for backpressure)

A model whose name holds ``judge`` grades an answer the way ``policies/quality.yaml`` asks, and
deterministically (so quality tests are exact): the user message's text after ``Answer:`` scores
1 when it is empty or a refusal ("sorry", "cannot", "can't", "don't know"), else 5.

``GET /_requests`` shows the bodies it received (to prove what reached a provider);
``GET /_stats`` counts streams started, finished and abandoned by the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

WORDS = "The answer is forty two and it came from".split()


class _Answer(Exception):
    """Answer this response now (an error or a misbehaviour)."""

    def __init__(self, response: web.Response) -> None:
        self.response = response


@web.middleware
async def _answers(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Answer as answer:
        return answer.response


class FakeLlm:
    def __init__(self, *, api_key: str | None = None, remember: int = 200) -> None:
        self.api_key = api_key
        self.requests: deque[dict[str, Any]] = deque(maxlen=remember)
        self.stats = {"streams_started": 0, "streams_finished": 0, "streams_abandoned": 0,
                      "bytes_streamed": 0}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_answers])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/_requests", self.list_requests)
        app.router.add_delete("/_requests", self.clear_requests)
        app.router.add_get("/_stats", self.get_stats)
        app.router.add_get("/healthz", self.get_stats)
        return app

    async def _body(self, request: web.Request, *, anthropic: bool) -> dict[str, Any]:
        given = request.headers.get("x-api-key") if anthropic else \
            request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key and given != self.api_key:
            error = {"type": "authentication_error", "message": "invalid x-api-key"} if anthropic \
                else {"message": "Incorrect API key provided", "type": "invalid_request_error"}
            raise _Answer(web.json_response({"error": error}, status=401))
        body = orjson.loads(await request.read())
        self.requests.append({"path": request.path, "body": body})
        return body

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, anthropic=False)
        model = body.get("model", "")
        await _misbehave(model)
        text = judge(body) if "judge" in model else " ".join([*WORDS, model])
        prompt_tokens = _count(body.get("messages"))
        if body.get("tools") and not body.get("stream"):
            return web.json_response(agent_turn(body, model, prompt_tokens))
        if not body.get("stream"):
            return web.json_response({
                "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion",
                "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                          "total_tokens": prompt_tokens + len(text.split())}})
        usage = None
        if (body.get("stream_options") or {}).get("include_usage") and not model.endswith("-nousage"):
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                     "total_tokens": prompt_tokens + len(text.split())}
        return await self._stream(request, model, text.split(), openai_chunks(model, usage))

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request, anthropic=True)
        model = body.get("model", "")
        await _misbehave(model, anthropic=True)
        text = judge(body) if "judge" in model else " ".join([*WORDS, model])
        prompt_tokens = _count(body.get("messages")) + _count(body.get("system"))
        if not body.get("stream"):
            return web.json_response({
                "id": f"msg_{time.time_ns()}", "type": "message", "role": "assistant",
                "model": model, "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": len(text.split())}})
        return await self._stream(request, model, text.split(),
                                  anthropic_events(model, prompt_tokens))

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._body(request, anthropic=False)
        await _misbehave(body.get("model", ""))
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        vectors = [[round(((hash(str(item)) >> i) % 1000) / 1000, 3) for i in range(8)]
                   for item in items]
        return web.json_response({
            "object": "list", "model": body.get("model"),
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": _count(items), "total_tokens": _count(items)}})

    async def _stream(self, request: web.Request, model: str, words: list[str],
                      events: Any) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self.stats["streams_started"] += 1
        try:
            for i, chunk in enumerate(events(["x" * 4096] * 16384 if model.endswith("-big") else words)):
                if model.endswith("-cut") and i == 3:
                    assert request.transport is not None
                    request.transport.close()  # a provider dying mid-answer
                    return response
                await response.write(chunk)
                self.stats["bytes_streamed"] += len(chunk)
                if model.endswith("-slow"):
                    await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionResetError):
            self.stats["streams_abandoned"] += 1
            raise
        self.stats["streams_finished"] += 1
        await response.write_eof()
        return response

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.requests))

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.json_response({"cleared": True})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)


ANALYSIS = """import csv, glob, statistics
for path in sorted(glob.glob('*.csv')):
    rows = list(csv.DictReader(open(path)))
    print(f'{path}: {len(rows)} rows')
    for column in rows[0]:
        try:
            values = [float(r[column]) for r in rows if r[column]]
        except ValueError:
            print(f'  {column}: text, {len(set(r[column] for r in rows))} distinct values')
            continue
        print(f'  {column}: mean {statistics.mean(values):.2f}, min {min(values):g}, max {max(values):g}')
"""


REFUSALS = ("sorry", "cannot", "can't", "don't know")


def judge(body: dict[str, Any]) -> str:
    """The evaluator's verdict on the last user message's ``Answer:`` part, as the rubric asks."""
    messages = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = messages[-1].get("content") if messages else ""
    answer = str(content or "").rpartition("Answer:")[2].strip().lower()
    bad = not answer or any(word in answer for word in REFUSALS)
    reason = "an empty answer or a refusal" if bad else "answers the question"
    return json.dumps({"score": 1 if bad else 5, "reason": reason})


def agent_turn(body: dict[str, Any], model: str, prompt_tokens: int) -> dict[str, Any]:
    """A model that uses its first tool once (to analyse the CSV files it was given), then answers
    from the tool's output; a ``-loop`` model calls the tool forever (for step limits)."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool" and not model.endswith("-loop"):
        content = f"Here is what the data says:\n{last.get('content', '')}"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish, completion = "stop", len(content.split())
    else:
        tool = body["tools"][0]["function"]["name"]
        arguments = json.dumps({"code": ANALYSIS})
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{len(messages)}", "type": "function",
             "function": {"name": tool, "arguments": arguments}}]}
        finish, completion = "tool_calls", len(arguments.split())
    return {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}}


def openai_chunks(model: str, usage: dict[str, int] | None) -> Any:
    def chunks(words: list[str]) -> Any:
        base = {"id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": model}
        yield _data({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]})
        for i, word in enumerate(words):
            yield _data({**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + word},
                                              "finish_reason": None}]})
        yield _data({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage is not None:
            yield _data({**base, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"
    return chunks


def anthropic_events(model: str, input_tokens: int) -> Any:
    def events(words: list[str]) -> Any:
        yield _event("message_start", {"type": "message_start", "message": {
            "id": f"msg_{time.time_ns()}", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})
        yield _event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}})
        yield _event("ping", {"type": "ping"})
        for i, word in enumerate(words):
            yield _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                "type": "text_delta", "text": (" " if i else "") + word}})
        yield _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": len(words)}})
        yield _event("message_stop", {"type": "message_stop"})
    return events


async def _misbehave(model: str, *, anthropic: bool = False) -> None:
    if model.endswith("-fail"):
        raise _error(500, "The server had an error while processing your request.", anthropic)
    if model.endswith("-429"):
        raise _error(429, "Rate limit reached for requests", anthropic, {"retry-after": "1"})
    if model.endswith("-hang"):
        await asyncio.sleep(5)
    if model.endswith("-garbage"):
        raise _Answer(web.Response(text="<html>definitely not json</html>", content_type="text/html"))


def _error(status: int, message: str, anthropic: bool, headers: dict[str, str] | None = None) -> _Answer:
    payload = {"type": "error", "error": {"type": "api_error", "message": message}} if anthropic \
        else {"error": {"message": message, "type": "server_error"}}
    return _Answer(web.json_response(payload, status=status, headers=headers))


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count(v.get("content") if isinstance(v, dict) else v) for v in value)
    return 0


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake OpenAI + Anthropic upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8010)
    parser.add_argument("--api-key", default=os.environ.get("AICLOUD_FAKE_LLM_API_KEY"),
                        help="require this key, as the real ones do (default: $AICLOUD_FAKE_LLM_API_KEY)")
    args = parser.parse_args()
    web.run_app(FakeLlm(api_key=args.api_key).app(), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
