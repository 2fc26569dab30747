"""Reaching the platform's own model replicas: Unix sockets on this host, or plain http(s).

The provisioner runs replicas next to the router and gives their address as ``unix:/abs/path``.
Each socket gets one long-lived ``ClientSession`` over a ``UnixConnector``, so requests reuse
keep-alive connections instead of paying a connect (or a session) per call; the requests
themselves go to ``http://localhost/v1/...`` over that socket. http(s) replicas share the
router's one TCP session. Sessions of sockets no version uses any more are closed, so a
retired or deleted replica leaves no pool behind.

An endpoint version is one ``ReplicaSet``: a ``Provider`` built once per ``endpoints.ready``
that takes its replicas in turn. Everything a request needs (session and full URL per
operation) is computed when the set is built; a request only picks the next entry.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiohttp

from services.inference_router.providers import PATHS, post
from services.inference_router.wire import Format

UNIX = "unix:"
UNIX_BASE = "http://localhost/v1"
_HEADERS = {"content-type": "application/json"}


def socket_path(url: str) -> str | None:
    """The socket file of a ``unix:PATH`` URL (``unix:///PATH`` too), else None."""
    if not url.startswith(UNIX):
        return None
    return "/" + url[len(UNIX):].lstrip("/")


class Sessions:
    """Where a replica URL is reached: one pooled session per Unix socket, else the shared one."""

    def __init__(self, shared: aiohttp.ClientSession, *, per_socket: int = 256) -> None:
        self.shared = shared
        self._per_socket = per_socket
        self._unix: dict[str, aiohttp.ClientSession] = {}

    def reach(self, url: str) -> tuple[aiohttp.ClientSession, str]:
        """The session for ``url`` and the base URL to send to through it."""
        path = socket_path(url)
        if path is None:
            return self.shared, url.rstrip("/")
        session = self._unix.get(path)
        if session is None or session.closed:
            connector = aiohttp.UnixConnector(path=path, limit=self._per_socket, keepalive_timeout=60)
            session = self._unix[path] = aiohttp.ClientSession(connector=connector,
                                                               auto_decompress=False)
        return session, UNIX_BASE

    def sockets(self) -> set[str]:
        return set(self._unix)

    async def keep_only(self, urls: Iterable[str]) -> None:
        """Close the sessions of every socket not among ``urls`` (the replicas still routed to)."""
        used = {path for url in urls if (path := socket_path(url)) is not None}
        for path in [p for p in self._unix if p not in used]:
            await self._unix.pop(path).close()

    async def close(self) -> None:
        await self.keep_only(())


class ReplicaSet:
    """One endpoint version as a ``Provider``: its replicas, taken round-robin."""

    format: Format = "openai"
    external = False

    def __init__(self, name: str, urls: Iterable[str], *, sessions: Sessions, timeout_s: float) -> None:
        self.name = self.gen_ai_name = name
        self.timeout_s = timeout_s
        reached = [sessions.reach(url) for url in urls]
        if not reached:
            raise ValueError(f"{name} has no replica")
        self.size = len(reached)
        self._urls = {op: tuple((session, base + path) for session, base in reached)
                      for op, path in PATHS.items()}
        self._turn = 0

    async def open(self, operation: str, body: dict[str, object], *, stream: bool,
                   timeout_s: float) -> aiohttp.ClientResponse:
        urls = self._urls[operation]
        self._turn = turn = (self._turn + 1) % len(urls)
        session, url = urls[turn]
        return await post(session, url, body, headers=_HEADERS, name=self.name, stream=stream,
                          timeout_s=timeout_s)
