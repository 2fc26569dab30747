"""The two wire formats the router speaks, OpenAI's and Anthropic's, and translation between them.

Streams are read as server-sent events and, when client and provider speak the same format,
passed through byte for byte. Otherwise each upstream event becomes a neutral ``Part`` and is
rendered in the client's format, so usage, finish reasons and errors survive the trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Format = Literal["openai", "anthropic"]
_FINISH_TO_OPENAI = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                     "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}
_FINISH_TO_ANTHROPIC = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                        "content_filter": "refusal", "function_call": "tool_use"}
DEFAULT_ANTHROPIC_MAX_TOKENS = 1024


@dataclass
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_reasoning: int = 0
    reported: bool = False

    @classmethod
    def of_openai(cls, usage: dict[str, Any] | None) -> Usage:
        if not usage:
            return cls()
        details = usage.get("prompt_tokens_details") or {}
        out_details = usage.get("completion_tokens_details") or {}
        return cls(tokens_in=int(usage.get("prompt_tokens") or 0),
                   tokens_out=int(usage.get("completion_tokens") or 0),
                   tokens_cached=int(details.get("cached_tokens") or 0),
                   tokens_reasoning=int(out_details.get("reasoning_tokens") or 0), reported=True)

    def add_anthropic(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        cached = int(usage.get("cache_read_input_tokens") or 0)
        created = int(usage.get("cache_creation_input_tokens") or 0)
        if "input_tokens" in usage:
            self.tokens_in = int(usage["input_tokens"] or 0) + cached + created
            self.tokens_cached = cached
        if "output_tokens" in usage:
            self.tokens_out = int(usage["output_tokens"] or 0)
        self.reported = True

    def openai(self) -> dict[str, Any]:
        return {"prompt_tokens": self.tokens_in, "completion_tokens": self.tokens_out,
                "total_tokens": self.tokens_in + self.tokens_out,
                "prompt_tokens_details": {"cached_tokens": self.tokens_cached},
                "completion_tokens_details": {"reasoning_tokens": self.tokens_reasoning}}

    def anthropic(self) -> dict[str, Any]:
        return {"input_tokens": self.tokens_in - self.tokens_cached,
                "cache_read_input_tokens": self.tokens_cached, "output_tokens": self.tokens_out}


@dataclass
class Part:
    """One neutral stream event."""

    text: str = ""
    finish: str | None = None  # OpenAI vocabulary
    usage: Usage | None = None
    error: str | None = None
    done: bool = False


class SSEParser:
    """Incremental server-sent-events parser: feed bytes, get (event, data) pairs."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            name, data = "message", []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    name = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].lstrip())
            if data:
                events.append((name, b"\n".join(data)))
        return events


# -- requests --------------------------------------------------------------------------
def openai_to_anthropic(body: dict[str, Any], model: str) -> dict[str, Any]:
    system = [m for m in body.get("messages", []) if m.get("role") in ("system", "developer")]
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or DEFAULT_ANTHROPIC_MAX_TOKENS,
        "messages": [{"role": m["role"], "content": _anthropic_content(m.get("content"))}
                     for m in body.get("messages", []) if m.get("role") in ("user", "assistant")],
    }
    if system:
        out["system"] = "\n\n".join(_text_of(m.get("content")) for m in system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("stream", "stream")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    return out


def anthropic_to_openai(body: dict[str, Any], model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text_of(body["system"])})
    messages += [{"role": m["role"], "content": _text_of(m.get("content"))}
                 for m in body.get("messages", [])]
    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": body.get("max_tokens")}
    for key in ("temperature", "top_p", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    if body.get("stream"):
        out["stream_options"] = {"include_usage": True}
    return out


def _anthropic_content(content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": p.get("text", "")} for p in content
                if isinstance(p, dict) and p.get("type") == "text"]
    return content if content is not None else ""


def _text_of(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


# -- whole responses -------------------------------------------------------------------
def anthropic_response_to_openai(resp: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
    usage = Usage()
    usage.add_anthropic(resp.get("usage"))
    text = "".join(b.get("text", "") for b in resp.get("content", []) if b.get("type") == "text")
    return {
        "id": f"chatcmpl-{resp.get('id', '')}", "object": "chat.completion",
        "created": int(time.time()), "model": alias,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": _FINISH_TO_OPENAI.get(resp.get("stop_reason") or "", "stop")}],
        "usage": usage.openai(),
    }, usage


def openai_response_to_anthropic(resp: dict[str, Any], alias: str) -> tuple[dict[str, Any], Usage]:
    usage = Usage.of_openai(resp.get("usage"))
    choice = (resp.get("choices") or [{}])[0]
    text = _text_of((choice.get("message") or {}).get("content"))
    return {
        "id": f"msg_{resp.get('id', '')}", "type": "message", "role": "assistant", "model": alias,
        "content": [{"type": "text", "text": text}],
        "stop_reason": _FINISH_TO_ANTHROPIC.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None, "usage": usage.anthropic(),
    }, usage


# -- stream events -> parts --------------------------------------------------------------
def openai_part(data: bytes) -> Part:
    if data == b"[DONE]":
        return Part(done=True)
    chunk = orjson.loads(data)
    if "error" in chunk:
        return Part(error=str((chunk["error"] or {}).get("message", "upstream error")))
    part = Part(usage=Usage.of_openai(chunk["usage"]) if chunk.get("usage") else None)
    for choice in chunk.get("choices") or []:
        part.text += (choice.get("delta") or {}).get("content") or ""
        part.finish = choice.get("finish_reason") or part.finish
    return part


def anthropic_part(event: str, data: bytes, usage: Usage) -> Part:
    """``usage`` accumulates across message_start and message_delta."""
    payload = orjson.loads(data)
    kind = payload.get("type", event)
    if kind == "message_start":
        usage.add_anthropic((payload.get("message") or {}).get("usage"))
    elif kind == "content_block_delta":
        return Part(text=(payload.get("delta") or {}).get("text") or "")
    elif kind == "message_delta":
        usage.add_anthropic(payload.get("usage"))
        reason = (payload.get("delta") or {}).get("stop_reason")
        return Part(finish=_FINISH_TO_OPENAI.get(reason or "", "stop"), usage=usage)
    elif kind == "message_stop":
        return Part(done=True)
    elif kind == "error":
        return Part(error=str((payload.get("error") or {}).get("message", "upstream error")))
    return Part()


# -- parts -> client stream ----------------------------------------------------------------
@dataclass
class OpenAIRenderer:
    alias: str
    include_usage: bool
    id: str = field(default_factory=lambda: f"chatcmpl-{time.time_ns():x}")

    def render(self, part: Part) -> bytes:
        out = b""
        if part.text or part.finish:
            out += self._chunk([{"index": 0, "delta": {"content": part.text} if part.text else {},
                                 "finish_reason": part.finish}])
        if part.usage is not None and part.finish and self.include_usage:
            out += self._chunk([], usage=part.usage.openai())
        if part.done:
            out += b"data: [DONE]\n\n"
        return out

    def error(self, message: str) -> bytes:
        return b"data: " + orjson.dumps({"error": {"message": message, "type": "upstream_error",
                                                    "code": "stream_interrupted"}}) + b"\n\n"

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk",
                                "created": int(time.time()), "model": self.alias, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return b"data: " + orjson.dumps(body) + b"\n\n"


@dataclass
class AnthropicRenderer:
    alias: str
    started: bool = False
    usage: Usage = field(default_factory=Usage)
    finish: str = "stop"

    def render(self, part: Part) -> bytes:
        out = b""
        if not self.started:
            self.started = True
            out += _event("message_start", {"type": "message_start", "message": {
                "id": f"msg_{time.time_ns():x}", "type": "message", "role": "assistant",
                "model": self.alias, "content": [], "stop_reason": None,
                "usage": {"input_tokens": 0, "output_tokens": 0}}})
            out += _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": {"type": "text", "text": ""}})
        if part.usage is not None:
            self.usage = part.usage
        if part.text:
            out += _event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "text_delta", "text": part.text}})
        # OpenAI reports usage after the finish reason, so the closing events wait for the end.
        self.finish = part.finish or self.finish
        if part.done:
            out += _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            out += _event("message_delta", {
                "type": "message_delta", "usage": self.usage.anthropic(),
                "delta": {"stop_reason": _FINISH_TO_ANTHROPIC.get(self.finish, "end_turn")}})
            out += _event("message_stop", {"type": "message_stop"})
        return out

    def error(self, message: str) -> bytes:
        return _event("error", {"type": "error", "error": {"type": "api_error", "message": message}})


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
