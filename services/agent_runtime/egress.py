"""The egress proxy: the only way out of a sandbox, to the hosts its creator allowed.

A sandbox has no network. Programs in it that use HTTP(S)_PROXY reach 127.0.0.1:3128, which
sandboxd relays over a connection the runtime parked with it (the runtime dials in; the
sandbox cannot dial out). Here each such connection is read as an HTTP proxy request —
``CONNECT host:port`` for HTTPS, an absolute URI for plain HTTP — and the host is checked
against the sandbox's allowlist. Every decision is logged, kept for
``GET /v1/sandboxes/{id}/egress`` and published as ``aicloud.sandboxes.egress.v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog

from services.kit.sandbox import Box

log = structlog.get_logger(__name__)
PARKED = 4
HEAD_LIMIT = 16 * 1024


@dataclass(frozen=True)
class Decision:
    at: float
    host: str
    port: int
    allowed: bool
    reason: str


def allowed(host: str, allow: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == rule or (rule.startswith("*.") and host.endswith(rule[1:])) for rule in allow)


class EgressProxy:
    def __init__(self, box: Box, allow: tuple[str, ...], on_decision: Callable[[Decision], None]) -> None:
        self._box, self._allow, self._on_decision = box, allow, on_decision
        self.decisions: deque[Decision] = deque(maxlen=500)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(self) -> None:
        for _ in range(PARKED):
            self._spawn(self._park())

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _park(self) -> None:
        """Park one connection with sandboxd; once a program uses it, park the next."""
        while not self._closed:
            try:
                reader, writer = await asyncio.open_unix_connection(str(self._box.socket_path))
                writer.write(json.dumps({"op": "egress"}).encode() + b"\n")
                await writer.drain()
                if await reader.readline() != b"go\n":
                    writer.close()
                    await asyncio.sleep(0.5)
                    continue
            except OSError:
                if not self._box.alive():
                    return
                await asyncio.sleep(0.5)
                continue
            self._spawn(self._serve(reader, writer))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        method, target, rest = _request_line(head)
        host, port = _destination(method, target)
        verdict = (
            "allowed"
            if host and allowed(host, self._allow)
            else "not a proxy request"
            if not host
            else f"{host} is not on this sandbox's allowlist"
        )
        decision = Decision(time.time(), host or "?", port, verdict == "allowed", verdict)
        self.decisions.append(decision)
        self._on_decision(decision)
        log.info(
            "sandbox.egress", sandbox_id=self._box.box_id, host=host, port=port, allowed=decision.allowed
        )
        if not decision.allowed:
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n"
                + f"aicloud egress: {verdict}\n".encode()
            )
            await _close(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=10)
        except (OSError, TimeoutError) as exc:
            writer.write(f"HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n{exc}\n".encode())
            await _close(writer)
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:  # plain HTTP: the request goes on in origin form
            path = urlsplit(target)
            origin = (path.path or "/") + (f"?{path.query}" if path.query else "")
            up_writer.write(f"{method} {origin} ".encode() + rest)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _request_line(head: bytes) -> tuple[str, str, bytes]:
    """(method, target, everything after the target: version, headers, blank line)."""
    line, _, _ = head.partition(b"\r\n")
    parts = line.split(b" ", 2)
    if len(parts) != 3:
        return "", "", b""
    return (
        parts[0].decode(errors="replace"),
        parts[1].decode(errors="replace"),
        head[len(parts[0]) + len(parts[1]) + 2 :],
    )


def _destination(method: str, target: str) -> tuple[str | None, int]:
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        return (host.strip("[]") or None), int(port) if port.isdigit() else 443
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        return None, 0
    return url.hostname, url.port or 80


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        await writer.drain()
        writer.close()
        await writer.wait_closed()
