"""The notebook proxy: one host port in front of every running notebook's Jupyter socket.

``/notebooks/<id>/...`` goes to the Unix socket registered for ``<id>``: plain HTTP streamed
both ways (every method, headers minus hop-by-hop ones) and WebSockets (kernel channels,
terminals, events) message by message, with the subprotocol the browser asked for and Jupyter
chose. Jupyter has no token of its own, so this is where access is decided, on every request:

* ``Authorization: Bearer <key>`` (API clients), or
* ``?key=<key>`` once (a browser): the proxy keeps the key, sets an HttpOnly, SameSite=Strict
  cookie holding a random session id scoped to ``/notebooks/<id>/``, and sends the browser on
  to the same URL without the key, so the key is neither in the address bar nor in the cookie
  jar. It does so with a page that refreshes, not a 303: a browser drops a Strict cookie on a
  redirect that follows a link from another site (a chat message), and the notebook would
  answer 401; a refresh from the proxy's own page is same-site. Other requests with ``?key=``
  (a WebSocket, a script) are simply authenticated by it.

A key of another team sees 404, as if the notebook did not exist; no or a wrong key, 401 saying
how to authenticate. The key and the proxy's cookie are never passed on to Jupyter.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

log = structlog.get_logger(__name__)
COOKIE = "aicloud_notebook"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade", "expect"})
NOT_FORWARDED = HOP_BY_HOP | {"authorization"}
WS_HANDSHAKE = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
                          "sec-websocket-protocol", "content-length"})
Authenticate = Callable[[str], Awaitable[str | None]]
"""A presented key -> the team it belongs to, or None."""


@dataclass
class _Target:
    team: str
    socket_path: Path
    session: aiohttp.ClientSession | None = None


class NotebookProxy:
    def __init__(self, host: str, port: int, *, authenticate: Authenticate,
                 on_activity: Callable[[str], None] | None = None, public_url: str | None = None) -> None:
        self.host = host
        self.port = port
        self._authenticate = authenticate
        self._on_activity = on_activity
        self._public_url = public_url
        self._targets: dict[str, _Target] = {}
        self._sessions: dict[str, tuple[str, str]] = {}  # cookie -> (notebook id, key)
        self._sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None

    def register(self, notebook_id: str, team: str, socket_path: Path) -> None:
        current = self._targets.get(notebook_id)
        if current is not None and (current.team, current.socket_path) == (team, socket_path):
            return
        self.unregister(notebook_id)
        self._targets[notebook_id] = _Target(team, socket_path)

    def unregister(self, notebook_id: str) -> None:
        """Forget the notebook and every browser session opened on it."""
        target = self._targets.pop(notebook_id, None)
        if target is not None and target.session is not None:
            self._spawn(target.session.close())
        for cookie in [c for c, (n, _) in self._sessions.items() if n == notebook_id]:
            del self._sessions[cookie]

    def url_for(self, notebook_id: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self._public_url or f'http://{host}:{self.port}'}/notebooks/{notebook_id}/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/notebooks/{notebook_id}{tail:(/.*)?}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        log.info("notebook_proxy.started", host=self.host, port=self.port)

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"proxy stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for notebook_id in list(self._targets):
            self.unregister(notebook_id)
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        notebook_id = request.match_info["notebook_id"]
        key, via = self._presented_key(request, notebook_id)
        try:
            team = await self._authenticate(key) if key else None
        except Exception as exc:  # the key store is down: not the caller's fault, and said so
            detail = str(getattr(exc, "detail", exc))
            log.warning("notebook_proxy.auth_unavailable", notebook_id=notebook_id, error=detail)
            return _error(503, f"cannot check the API key now: {detail}")
        if team is None:
            return _error(401, f"missing or invalid API key: send 'Authorization: Bearer <key>', or open "
                               f"/notebooks/{notebook_id}/?key=<key> once in a browser")
        target = self._targets.get(notebook_id)
        if target is None or target.team != team:
            return _error(404, f"notebook {notebook_id} not found")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        if via == "query" and request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
            return self._open_session(request, notebook_id, key)
        if self._on_activity is not None:
            self._on_activity(notebook_id)
        if not target.socket_path.exists():
            return _error(502, f"notebook {notebook_id} is not running")
        if websocket:
            return await self._websocket(request, notebook_id, target)
        return await self._http(request, notebook_id, target)

    def _presented_key(self, request: web.Request, notebook_id: str) -> tuple[str, str]:
        """(key, how it came: header, query or cookie); an empty key when none did."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip(), "header"
        if request.query.get("key"):
            return request.query["key"], "query"
        notebook, key = self._sessions.get(request.cookies.get(COOKIE, ""), ("", ""))
        return (key, "cookie") if notebook == notebook_id else ("", "")

    def _open_session(self, request: web.Request, notebook_id: str, key: str) -> web.StreamResponse:
        cookie = secrets.token_urlsafe(32)
        self._sessions[cookie] = (notebook_id, key)
        target = html.escape(str(_without_key(request.rel_url)), quote=True)
        response = web.Response(content_type="text/html", headers={"Cache-Control": "no-store"},
                                text=f'<!doctype html><meta http-equiv="refresh" content="0;url={target}">'
                                     f'<a href="{target}">continue</a>')
        response.set_cookie(COOKIE, cookie, path=f"/notebooks/{notebook_id}/", httponly=True,
                            samesite="Strict", secure=request.secure)
        return response

    def _session(self, target: _Target) -> aiohttp.ClientSession:
        if target.session is None:
            # No total timeout: downloads and long polls may take their time; connecting may not.
            target.session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(target.socket_path)), auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return target.session

    async def _http(self, request: web.Request, notebook_id: str, target: _Target) -> web.StreamResponse:
        headers = _forwarded_headers(request, NOT_FORWARDED)
        body = request.content if request.body_exists else None
        try:
            upstream = await self._session(target).request(
                request.method, _upstream_url(request), headers=headers, data=body, allow_redirects=False)
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
            return _error(502, f"notebook {notebook_id} is not running")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _websocket(self, request: web.Request, notebook_id: str,
                         target: _Target) -> web.StreamResponse:
        asked = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        headers = _forwarded_headers(request, NOT_FORWARDED | WS_HANDSHAKE)
        try:
            upstream = await self._session(target).ws_connect(
                _upstream_url(request), headers=headers, protocols=asked, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            return _error(exc.status, f"notebook {notebook_id} refused the WebSocket: {exc.message}")
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
            return _error(502, f"notebook {notebook_id} is not running")
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                       max_msg_size=0)
        self._sockets.add(client)
        try:
            await client.prepare(request)
            pumps = [asyncio.create_task(self._pump(upstream, client, notebook_id)),
                     asyncio.create_task(self._pump(client, upstream, notebook_id))]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        finally:
            self._sockets.discard(client)
            await upstream.close()
            await client.close(code=upstream.close_code or aiohttp.WSCloseCode.OK)
        return client

    async def _pump(self, source: Any, sink: Any, notebook_id: str) -> None:
        """Messages from one side to the other until either closes."""
        async for message in source:
            if self._on_activity is not None:
                self._on_activity(notebook_id)
            try:
                if message.type is WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                elif message.type is WSMsgType.ERROR:
                    return
            except (ConnectionResetError, aiohttp.ClientError):
                return


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


def _without_key(url: URL) -> URL:
    if "key" not in url.query:
        return url
    return url.with_query([(k, v) for k, v in url.query.items() if k != "key"])


def _upstream_url(request: web.Request) -> URL:
    return URL(f"http://notebook{_without_key(request.rel_url)}", encoded=True)


def _forwarded_headers(request: web.Request, drop: frozenset[str]) -> CIMultiDict[str]:
    """The request's headers for Jupyter: Host and Origin as the browser sent them (Jupyter
    compares them), without hop-by-hop ones, the key, or the proxy's cookie."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() == "cookie":
            value = "; ".join(p.strip() for p in value.split(";")
                              if p.strip() and p.strip().partition("=")[0] != COOKIE)
        if name.lower() not in drop and value:
            headers.add(name, value)
    return headers
