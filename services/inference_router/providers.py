"""Upstreams behind one typed port: OpenAI, Anthropic, any OpenAI-compatible server.

Credentials are the router's own (settings, environment or secret files); a caller's headers
never reach an upstream. Upstream errors are turned into ``UpstreamError`` with a message
scrubbed of anything that looks like a secret, so an upstream echoing a key cannot leak it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import orjson

from services.inference_router import config
from services.inference_router.guard import Findings, scan
from services.inference_router.wire import Format

ANTHROPIC_VERSION = "2023-06-01"
RETRYABLE = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
PATHS = {"chat": "/chat/completions", "embeddings": "/embeddings", "messages": "/messages",
         "predict": "/predict"}


class UpstreamError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE or self.status == 0


class Provider(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def format(self) -> Format: ...
    @property
    def external(self) -> bool: ...
    @property
    def gen_ai_name(self) -> str: ...
    @property
    def timeout_s(self) -> float: ...

    async def open(self, operation: str, body: dict[str, object], *, stream: bool,
                   timeout_s: float) -> aiohttp.ClientResponse: ...


@dataclass
class HttpProvider:
    """One upstream over a shared aiohttp session (pooled keep-alive connections)."""

    name: str
    spec: config.Provider
    session: aiohttp.ClientSession

    @property
    def format(self) -> Format:
        return "anthropic" if self.spec.kind == "anthropic" else "openai"

    @property
    def external(self) -> bool:
        return self.spec.external

    @property
    def gen_ai_name(self) -> str:
        return {"openai": "openai", "anthropic": "anthropic"}.get(self.spec.kind, self.name)

    @property
    def timeout_s(self) -> float:
        return self.spec.timeout_s

    async def open(self, operation: str, body: dict[str, object], *, stream: bool,
                   timeout_s: float) -> aiohttp.ClientResponse:
        return await post(self.session, self.spec.base_url.rstrip("/") + PATHS[operation], body,
                          headers=self._headers(), name=self.name, stream=stream, timeout_s=timeout_s)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        key = self.spec.api_key()
        if self.spec.kind == "anthropic":
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if key:
                headers["x-api-key"] = key
        elif key:
            headers["authorization"] = f"Bearer {key}"
        return headers


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, object], *,
               headers: dict[str, str], name: str, stream: bool,
               timeout_s: float) -> aiohttp.ClientResponse:
    """POST ``body`` to ``url``; the response once its status is 200, else an ``UpstreamError``."""
    try:
        response = await session.post(url, data=orjson.dumps(body), headers=headers,
                                      timeout=_timeout(timeout_s, stream))
    except TimeoutError:
        raise UpstreamError(504, f"{name} did not answer within {timeout_s:g} s") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(0, f"{name} is unreachable: {type(exc).__name__}") from None
    if response.status != 200:
        raise await _error_of(name, response)
    return response


@functools.lru_cache(maxsize=64)
def _timeout(timeout_s: float, stream: bool) -> aiohttp.ClientTimeout:
    # A stream may run long as long as chunks keep coming; a whole answer has one deadline.
    return (aiohttp.ClientTimeout(sock_connect=min(timeout_s, 5), sock_read=timeout_s)
            if stream else aiohttp.ClientTimeout(total=timeout_s))


async def _error_of(name: str, response: aiohttp.ClientResponse) -> UpstreamError:
    try:
        raw = await response.read()
        payload = orjson.loads(raw)
        error = payload.get("error") if isinstance(payload, dict) else None
        message = str(error.get("message") if isinstance(error, dict) else error or raw[:200])
    except Exception:
        message = "an unreadable error body"
    finally:
        response.release()
    retry_after = response.headers.get("retry-after")
    return UpstreamError(response.status, f"{name} answered {response.status}: "
                         f"{scan(message, Findings(), redact=True)[:300]}",
                         retry_after=float(retry_after) if retry_after and
                         retry_after.replace(".", "", 1).isdigit() else None)
