"""Notebooks for real: JupyterLab in gVisor and in bubblewrap, reached only through the proxy.

Cells run over the kernel WebSocket through the proxy (Jupyter messaging v5); a cell that
tries the network fails and a listener on the host hears nothing; Jupyter's activity record
moves; notebooks land on the volume; stop and reap leave no process; a real Chromium loads
JupyterLab through the proxy with a key given once in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

from services.kit.sandbox import Isolation, Sandbox, available
from services.provisioner.notebooks import Notebook, NotebookProxy, reap, start_notebook

pytestmark = pytest.mark.integration
SANDBOXED = [i for i in (Isolation.GVISOR, Isolation.BUBBLEWRAP) if i in available()]
KEYS = {"key-legal": "legal", "key-research": "research"}
LEGAL = {"Authorization": "Bearer key-legal"}
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
NETWORK_CELL = """\
import os, socket
for target in [("1.1.1.1", 80), ({host!r}, {port})]:
    try:
        socket.create_connection(target, timeout=3)
        print("connected", target)
    except OSError as exc:
        print(type(exc).__name__, exc.errno)
os.symlink("/etc/passwd", "leak.txt")
print("visible:", [p for p in {hidden!r} if os.path.exists(p)])
"""


async def team_for(key: str) -> str | None:
    return KEYS.get(key)


@pytest.fixture
async def base() -> AsyncIterator[Path]:
    """Short paths (a Unix socket's path has at most 107 bytes); whatever a failed test left
    running is reaped."""
    folder = Path(tempfile.mkdtemp(prefix="nb-", dir="/var/tmp"))
    (folder / "state").mkdir()
    yield folder
    for isolation in SANDBOXED:
        await reap(Sandbox(isolation, state_dir=folder / "state"), folder / "nb")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def proxy() -> AsyncIterator[NotebookProxy]:
    seen: list[str] = []
    server = NotebookProxy("127.0.0.1", 0, authenticate=team_for, on_activity=seen.append)
    server.seen = seen  # type: ignore[attr-defined]
    await server.start()
    yield server
    await server.stop()


def host_address() -> str:
    """An address of this host that is not loopback."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    pytest.skip("this host has no non-loopback IPv4 address")


async def execute(ws: aiohttp.ClientWebSocketResponse, code: str) -> dict[str, str]:
    """One execute_request over the kernel's channels; its text output, result and error."""
    msg_id = uuid.uuid4().hex
    await ws.send_str(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": "s", "msg_type": "execute_request",
                   "version": "5.3", "date": "2026-01-01T00:00:00Z"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True}}))
    got = {"stdout": "", "result": "", "error": "", "status": ""}
    idle = False
    async with asyncio.timeout(30):
        while not (idle and got["status"]):
            message = json.loads((await ws.receive()).data)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                got["stdout"] += content["text"]
            elif kind == "execute_result":
                got["result"] = content["data"]["text/plain"]
            elif kind == "error":
                got["error"] = content["ename"]
            elif kind == "execute_reply":
                got["status"] = content["status"]
            idle = idle or (kind == "status" and content["execution_state"] == "idle")
    return got


async def until_busy(notebook: Notebook, busy: bool) -> None:
    async with asyncio.timeout(10):
        while (await notebook.status()).busy is not busy:
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_a_notebook_through_the_proxy(base: Path, proxy: NotebookProxy, isolation: Isolation) -> None:
    sandbox = Sandbox(isolation, state_dir=base / "state")
    volume = base / "volumes" / "legal"
    started = time.monotonic()
    notebook = await start_notebook(sandbox, notebook_id="nb1", team="legal", root=base / "nb", volume=volume)
    cold_start = time.monotonic() - started
    proxy.register("nb1", "legal", notebook.socket_path)
    url = proxy.url_for("nb1")
    assert url == f"http://127.0.0.1:{proxy.port}/notebooks/nb1/"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        for headers, status in (({}, 401), ({"Authorization": "Bearer nope"}, 401),
                                ({"Authorization": "Bearer key-research"}, 404)):
            async with http.get(f"{url}api/status", headers=headers) as response:
                assert response.status == status, await response.text()
                detail = (await response.json())["detail"]
                expected = "Authorization: Bearer <key>" if status == 401 else "notebook nb1 not found"
                assert expected in detail, detail
        async with http.get(f"{url.replace('nb1', 'nb9')}api/status", headers=LEGAL) as response:
            assert (response.status, (await response.json())["detail"]) == (404, "notebook nb9 not found")
        async with http.get(f"{url}api/status?key=key-legal", headers={"Accept": "text/html"}) as response:
            assert response.status == 200  # a browser: on to the same URL without the key, with a session
            assert 'content="0;url=/notebooks/nb1/api/status"' in await response.text()
            assert "key-legal" not in response.headers["Set-Cookie"]
        async with http.get(f"{url}api/status") as response:  # the session cookie alone
            assert response.status == 200 and "last_activity" in await response.json()
        async with aiohttp.ClientSession() as script, \
                script.get(f"{url}api/status?key=key-legal") as response:  # a script: served as is
            assert response.status == 200 and "last_activity" in await response.json()

        notebook_json = {"cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": "1+1",
                                    "outputs": [], "execution_count": None}],
                         "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        async with http.put(f"{url}api/contents/analysis.ipynb", headers=LEGAL,
                            json={"type": "notebook", "content": notebook_json}) as response:
            assert response.status == 201, await response.text()
        async with http.put(f"{url}api/contents/data.csv", headers=LEGAL,
                            json={"type": "file", "format": "text", "content": "a,b\n1,2\n"}) as response:
            assert response.status == 201, await response.text()
        async with http.post(f"{url}api/kernels", headers=LEGAL, json={"name": "python3"}) as response:
            assert response.status == 201, await response.text()
            kernel = (await response.json())["id"]

        before = await notebook.status()
        assert before.kernels == 1 and not before.busy
        channels = f"ws://127.0.0.1:{proxy.port}/notebooks/nb1/api/kernels/{kernel}/channels"
        async with http.ws_connect(channels, headers=LEGAL) as ws:
            assert (await execute(ws, "1+1"))["result"] == "2"
            after = await notebook.status()
            assert after.last_activity > before.last_activity and after.connections == 1

            listener = socket.create_server((host_address(), 0))
            host, port = listener.getsockname()
            out = await execute(ws, NETWORK_CELL.format(host=host, port=port, hidden=[
                str(base / "nb"), str(volume), "/run", "/root/.bashrc", __file__]))
            *lines, visible = out["stdout"].splitlines()
            assert visible == "visible: []", out  # other notebooks, volumes, host sockets, this code
            assert len(lines) == 2 and not any("connected" in line for line in lines), out
            assert all(line.split()[0] in ("OSError", "TimeoutError", "ConnectionRefusedError")
                       for line in lines), lines
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()  # nothing reached the host
            listener.close()

            sleeping = asyncio.create_task(execute(ws, "import time; time.sleep(2)"))
            await until_busy(notebook, True)
            assert (await sleeping)["status"] == "ok"
            await until_busy(notebook, False)
            quiet = await notebook.status()
            await asyncio.sleep(0.5)
            assert (await notebook.status()).last_activity == quiet.last_activity  # polling is not use
        async with http.post(f"{url}api/terminals", headers=LEGAL) as response:
            terminal = (await response.json())["name"]
        shell = f"ws://127.0.0.1:{proxy.port}/notebooks/nb1/terminals/websocket/{terminal}"
        async with http.ws_connect(shell, headers=LEGAL) as ws:
            command = "python3 -c 'import socket; print(6*7, [n for _, n in socket.if_nameindex()])'\r"
            await ws.send_str(json.dumps(["stdin", command]))
            seen = ""
            async with asyncio.timeout(15):
                while "42 ['lo']" not in seen:  # a terminal works, and loopback is all there is
                    kind, *text = json.loads((await ws.receive()).data)
                    seen += text[0] if kind == "stdout" else ""
    assert "nb1" in proxy.seen  # type: ignore[attr-defined]

    saved = await notebook.save(volume)
    assert saved == ["analysis.ipynb", "data.csv"]  # not the link the cell planted
    cells = json.loads((volume / "nb1" / "analysis.ipynb").read_text())["cells"]
    assert "".join(cells[0]["source"]) == "1+1"
    tree = [psutil.Process(notebook.pid), *psutil.Process(notebook.pid).children(recursive=True)]
    await notebook.stop()
    await notebook.stop()  # idempotent
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not notebook.socket_path.exists() and not (base / "nb" / "nb1").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if notebook.container_id in " ".join(
        p.info["cmdline"] or ())]
    assert await sandbox.containers() == []
    assert (volume / "nb1" / "data.csv").read_text() == "a,b\n1,2\n"
    async with aiohttp.ClientSession() as http, http.get(f"{url}api/status", headers=LEGAL) as response:
        assert (response.status, (await response.json())["detail"]) == (502, "notebook nb1 is not running")
    print(f"cold start under {isolation}: {cold_start:.1f} s; the network cell said {lines}")


async def test_jupyterlab_works_in_a_real_browser(base: Path, proxy: NotebookProxy) -> None:
    """Opened from a link on another site, as a chat message would be: the SameSite=Strict
    session cookie must survive the hop that takes the key out of the URL."""
    volume = base / "volumes" / "legal"
    (volume / "nb3").mkdir(parents=True)
    (volume / "nb3" / "hello.ipynb").write_text(json.dumps({
        "cells": [{"cell_type": "code", "id": "c1", "metadata": {}, "source": "6*7", "outputs": [],
                   "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    sandbox = Sandbox(SANDBOXED[0], state_dir=base / "state")
    notebook = await start_notebook(sandbox, notebook_id="nb3", team="legal", root=base / "nb", volume=volume)
    proxy.register("nb3", "legal", notebook.socket_path)
    link = f"{proxy.url_for('nb3')}lab/tree/hello.ipynb?key=key-legal"

    async def chat(_: web.Request) -> web.Response:
        return web.Response(text=f'<a id="go" href="{link}">open</a>', content_type="text/html")

    elsewhere = web.Application()
    elsewhere.router.add_get("/", chat)
    runner = web.AppRunner(elsewhere)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    other = f"http://localhost:{runner.addresses[0][1]}/"  # another site than 127.0.0.1
    requests: list[str] = []
    sockets: list[str] = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS)
            page = await browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(other)
            await page.click("#go")
            await page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
            assert page.url == f"{proxy.url_for('nb3')}lab/tree/hello.ipynb"  # the key is gone
            assert await run_first_cell(page, notebook) == "42"
            cookie = next(c for c in await page.context.cookies() if c["name"] == "aicloud_notebook")
            assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
            assert cookie["path"] == "/notebooks/nb3/"
            assert "key-legal" not in cookie["value"]
            await browser.close()
    finally:
        await runner.cleanup()
        await notebook.stop()
    ours = (f"http://127.0.0.1:{proxy.port}/", other)
    assert [u for u in requests if not u.startswith(ours)] == []  # nothing from the internet
    assert any("/notebooks/nb3/api/kernels/" in u and "/channels" in u for u in sockets), sockets


async def run_first_cell(page: Any, notebook: Notebook) -> str:
    """Shift+Enter in the first cell until it runs. JupyterLab (without a proxy too) may drop a
    run asked for while it still sets up the kernel's connection, or ask which kernel to use."""
    await page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    async with asyncio.timeout(30):
        while True:  # until the kernel's WebSocket is connected, through the proxy
            # Jupyter answers 500 to api/kernels while JupyterLab shuts down a kernel it started
            # twice; the platform's watcher skips such a poll, and so does this.
            with contextlib.suppress(aiohttp.ClientResponseError):
                if (await notebook.status()).connections >= 1:
                    break
            await asyncio.sleep(0.1)
    for _ in range(10):
        if await page.query_selector(".jp-Dialog"):
            await page.click(".jp-Dialog .jp-mod-accept")
        await page.click(".jp-Notebook .jp-Cell .cm-content", timeout=5_000)
        await page.keyboard.press("Shift+Enter")
        with contextlib.suppress(PlaywrightTimeout):
            output = await page.wait_for_selector(".jp-OutputArea-output", timeout=3_000)
            return str(await output.inner_text()).strip()
    raise AssertionError("the cell never ran")


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_reap_kills_a_lost_server_and_keeps_its_work(base: Path, isolation: Isolation) -> None:
    sandbox = Sandbox(isolation, state_dir=base / "state")
    volume = base / "volumes" / "legal"
    (volume / "nb2").mkdir(parents=True)
    (volume / "nb2" / "old.ipynb").write_text("{}")
    notebook = await start_notebook(sandbox, notebook_id="nb2", team="legal", root=base / "nb", volume=volume)
    assert (notebook.work / "old.ipynb").read_text() == "{}"  # seeded from the volume
    (notebook.work / "new.txt").write_text("unsaved")
    tree = [psutil.Process(notebook.pid), *psutil.Process(notebook.pid).children(recursive=True)]
    assert await reap(sandbox, base / "nb") == ["nb2"]  # as a restarted provisioner would
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not (base / "nb" / "nb2").exists()
    assert (volume / "nb2" / "new.txt").read_text() == "unsaved"
    await notebook.stop()


async def test_bad_notebook_ids_are_refused(base: Path) -> None:
    sandbox = Sandbox(SANDBOXED[-1], state_dir=base / "state")
    for bad in ("../etc", "a/b", "Nb", "nb 1", "", "-x", "x" * 64):
        with pytest.raises(ValueError, match="lowercase letters, digits"):
            await start_notebook(sandbox, notebook_id=bad, team="legal", root=base / "nb", volume=base / "v")
    assert not (base / "nb").exists()
    with pytest.raises(RuntimeError, match="gVisor or bubblewrap"):
        await start_notebook(Sandbox(Isolation.RLIMITS, state_dir=base / "state"), notebook_id="ok",
                             team="legal", root=base / "nb", volume=base / "v")
