"""Agent sandboxes through their HTTP API, under gVisor and under bubblewrap, for real.

Each limit is tried: a fork bomb, a memory hog, an infinite loop, a write outside the
workspace, a full disk, an outbound connection; each is contained, reported by name, and the
host and the next sandbox are unaffected.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text

from services.kit.sandbox import Isolation
from tests.integration.sandbox_fixtures import Runtime

pytestmark = pytest.mark.integration
SANDBOXED = [Isolation.GVISOR, Isolation.BUBBLEWRAP]


def outside_sandboxes(runtime: Runtime) -> int:
    """Host processes that are not part of a sandbox (gVisor keeps stub processes of its own)."""
    inside = {p.pid for top in sandbox_processes(runtime) for p in [top, *safe_children(top)]}
    return len(set(psutil.pids()) - inside)


def safe_children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return list(proc.children(recursive=True))
    except psutil.Error:
        return []


def sandbox_processes(runtime: Runtime) -> list[psutil.Process]:
    return sandbox_processes_under(runtime.root)


def sandbox_processes_under(root: Path) -> list[psutil.Process]:
    """Host processes of the sandboxes kept under ``root`` (their command lines name it)."""
    marker = str(root)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


async def pool_refilled(runtime: Runtime) -> None:
    async with asyncio.timeout(20):
        while True:
            templates = (await runtime.client.get("/v1/sandboxes/templates")).json()
            if all(t["pool_ready"] >= 1 for t in templates if t["name"] == "python"):
                return
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_create_exec_files_delete(make_runtime: Callable[..., Any], isolation: Isolation) -> None:
    runtime: Runtime = await make_runtime(isolation)
    box = await runtime.create(template="python")
    assert box["isolation"] == isolation.value and box["template"] == "python"
    out, err, end = await runtime.exec(
        box["sandbox_id"],
        code="import os, sys\nprint('hi', os.getcwd())\nprint('oops', file=sys.stderr)\nsys.exit(3)",
    )
    assert (out, err, end["exit_code"], end["limit"]) == ("hi /workspace\n", "oops\n", 3, None)

    put = await runtime.client.put(
        f"/v1/sandboxes/{box['sandbox_id']}/files/data/in.csv",
        content=b"a,b\n1,2\n",
        headers=runtime.headers(),
    )
    assert put.status_code == 200 and put.json()["size"] == 8
    out, _, end = await runtime.exec(box["sandbox_id"], command=["sh", "-c", "wc -l < data/in.csv > n.txt"])
    assert end["exit_code"] == 0
    url = f"/v1/sandboxes/{box['sandbox_id']}"
    got = await runtime.client.get(f"{url}/files/n.txt", headers=runtime.headers())
    assert got.content.strip() == b"2"
    listing = await runtime.client.get(f"/v1/sandboxes/{box['sandbox_id']}/files", headers=runtime.headers())
    assert {e["name"] for e in listing.json()} == {"data", "n.txt"}

    other = await runtime.client.get(url, headers=runtime.headers("research"))
    assert other.status_code == 404  # another team cannot even see it
    assert (
        await runtime.client.delete(f"/v1/sandboxes/{box['sandbox_id']}", headers=runtime.headers())
    ).status_code == 200
    gone = await runtime.client.post(
        f"/v1/sandboxes/{box['sandbox_id']}/exec", json={"code": "print(1)"}, headers=runtime.headers()
    )
    assert gone.status_code == 410 and "deleted" in gone.json()["detail"]
    assert not [p for p in sandbox_processes(runtime) if box["sandbox_id"] in " ".join(p.cmdline())]


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_each_limit_is_contained_and_named(
    make_runtime: Callable[..., Any], isolation: Isolation
) -> None:
    runtime: Runtime = await make_runtime(isolation)
    box = (await runtime.create(template="python"))["sandbox_id"]
    other = (await runtime.create(template="python"))["sandbox_id"]
    await pool_refilled(runtime)
    host_before = outside_sandboxes(runtime)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    cases = {
        "pids": "import os, time\nwhile True:\n    os.fork()",
        "memory": "x = bytearray(600 * 1024 * 1024)",
        "cpu_time": "while True: pass",
        "read_only": "open('/usr/evil', 'w').write('x')",
        "disk": "open('/workspace/big', 'wb').write(b'x' * (64 << 20))",
        "network": f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)",
    }
    for limit, code in cases.items():
        out, err, end = await runtime.exec(box, code=code)
        assert end["limit"] == limit, (limit, end, err[-300:])
        assert end["exit_code"] != 0
        # The sandbox itself lives on and still works after each.
        out, _, ok = await runtime.exec(box, code="print(6 * 7)")
        assert (out, ok["exit_code"]) == ("42\n", 0), limit
    out, _, end = await runtime.exec(box, code="import time; time.sleep(30)", timeout_s=1)
    assert end["limit"] == "timeout" and end["exit_code"] == -9
    listener.settimeout(0.1)
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing ever reached the host
    assert outside_sandboxes(runtime) <= host_before + 2  # nothing ran away onto the host
    # Another sandbox is unaffected throughout.
    out, _, end = await runtime.exec(other, command=["python3", "-c", "print('fine')"])
    assert (out, end["exit_code"]) == ("fine\n", 0)


async def test_bad_input_gets_clear_errors(make_runtime: Callable[..., Any]) -> None:
    runtime: Runtime = await make_runtime(Isolation.BUBBLEWRAP)
    h = runtime.headers()
    unknown = await runtime.client.post("/v1/sandboxes", json={"template": "cobol"}, headers=h)
    assert unknown.status_code == 422 and "use one of numpy, python, shell" in unknown.json()["detail"]
    box = (await runtime.create(template="shell"))["sandbox_id"]
    for raw, status, words in (
        (b'{"command": ["echo", "a\\udcffb"]}', 422, "not valid UTF-8"),
        (b'{"command": ["echo", "a\xffb"]}', 400, "error parsing the body"),
    ):
        response = await runtime.client.post(
            f"/v1/sandboxes/{box}/exec", content=raw, headers={**h, "content-type": "application/json"}
        )
        assert response.status_code == status and words in response.json()["detail"], (raw, response.text)
    cases = [
        ({"command": ["echo", "a\x00b"]}, 422, "NUL byte"),
        ({"command": []}, 422, "empty"),
        ({"command": ["ls"], "code": "ls"}, 422, "exactly one"),
        ({"code": "true", "timeout_s": 0}, 422, "timeout_s"),
    ]
    for body, status, words in cases:
        response = await runtime.client.post(f"/v1/sandboxes/{box}/exec", json=body, headers=h)
        assert response.status_code == status and words in response.json()["detail"], (body, response.text)
    missing = await runtime.exec(box, command=["/no/such/program"])
    assert missing[2]["exit_code"] == 127 and "No such file" in missing[2]["error"]
    escape = await runtime.client.get(f"/v1/sandboxes/{box}/files/../../etc/passwd", headers=h)
    assert escape.status_code in (404, 422)
    escape = await runtime.client.put(f"/v1/sandboxes/{box}/files/a%2F..%2F..%2Fx", content=b"x", headers=h)
    assert escape.status_code == 422 and "outside the workspace" in escape.json()["detail"]
    big = await runtime.client.put(f"/v1/sandboxes/{box}/files/big.bin", content=b"x" * (11 << 20), headers=h)
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    absent = await runtime.client.get(f"/v1/sandboxes/{box}/files/nothing.txt", headers=h)
    assert absent.status_code == 422 and "nothing.txt" in absent.json()["detail"]
    assert (await runtime.client.get("/v1/sandboxes/sb-nope", headers=h)).status_code == 404
    anonymous = await runtime.client.get("/v1/sandboxes", headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401


async def test_ttl_and_idle_reap_and_say_why(make_runtime: Callable[..., Any]) -> None:
    runtime: Runtime = await make_runtime(Isolation.BUBBLEWRAP)
    short = (await runtime.create(template="python", ttl_s=10))["sandbox_id"]
    idle = (await runtime.create(template="shell"))["sandbox_id"]  # idle_s: 6

    async def status(sandbox_id: str) -> tuple[int, str]:
        r = await runtime.client.get(f"/v1/sandboxes/{sandbox_id}", headers=runtime.headers())
        return r.status_code, r.json().get("detail", "")

    async with asyncio.timeout(20):
        while (await status(idle))[0] != 410 or (await status(short))[0] != 410:
            await asyncio.sleep(0.5)
    assert "expired" in (await status(short))[1] and "idle" in (await status(idle))[1]
    left = " ".join(" ".join(p.cmdline()) for p in sandbox_processes(runtime))
    assert short not in left and idle not in left


async def test_the_template_packages_are_pinned_and_importable(make_runtime: Callable[..., Any]) -> None:
    runtime: Runtime = await make_runtime(Isolation.BUBBLEWRAP)
    templates = {t["name"]: t for t in (await runtime.client.get("/v1/sandboxes/templates")).json()}
    assert templates["numpy"]["available"], templates["numpy"]["error"]
    box = (await runtime.create(template="numpy"))["sandbox_id"]
    code = "import numpy as np; print(np.__version__, np.arange(4).sum())"
    out, err, end = await runtime.exec(box, code=code)
    assert (out, end["exit_code"]) == ("2.2.6 6\n", 0), err


async def test_agent_state_is_served_per_team_and_swept(make_runtime: Callable[..., Any]) -> None:
    master = base64.b64encode(b"k" * 32).decode()
    runtime: Runtime = await make_runtime(
        Isolation.BUBBLEWRAP,
        state_master_keys=json.dumps({"k1": master}),
        state_active_key="k1",
        state_sweep_interval_s=0.5,
    )
    put = await runtime.client.put(
        "/v1/agents/analyst/memory/plan", json={"value": {"step": 1}, "ttl_s": 1}, headers=runtime.headers()
    )
    assert put.status_code == 200, put.text
    got = await runtime.client.get("/v1/agents/analyst/memory/plan", headers=runtime.headers())
    assert got.json()["value"] == {"step": 1}
    other = await runtime.client.get("/v1/agents/analyst/memory/plan", headers=runtime.headers("research"))
    assert other.status_code == 404
    await asyncio.sleep(1.2)
    assert (
        await runtime.client.get("/v1/agents/analyst/memory/plan", headers=runtime.headers())
    ).status_code in (404, 410)
    async with asyncio.timeout(5):  # the sweeper removes the row itself
        while True:
            async with runtime.service.db.transaction() as session:
                if not (await session.execute(text("SELECT count(*) FROM agent_memory"))).scalar_one():
                    break
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_stopping_mid_refill_leaves_no_sandbox(
    make_runtime: Callable[..., Any], isolation: Isolation
) -> None:
    runtime: Runtime = await make_runtime(isolation)
    await pool_refilled(runtime)
    await runtime.create(template="python")  # the pool refills 250 ms later
    await asyncio.sleep(0.3)  # ... and is starting a sandbox now
    await runtime.stop()
    assert sandbox_processes(runtime) == []


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_egress_only_to_allowed_hosts_and_every_attempt_logged(
    make_runtime: Callable[..., Any], isolation: Isolation
) -> None:
    runtime: Runtime = await make_runtime(isolation)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\nconnection: close\r\n\r\nhello from out")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fetch = (
        f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/x', timeout=5).read())"
    )
    try:
        allowed = (await runtime.create(template="python", allow_hosts=["127.0.0.1"]))["sandbox_id"]
        out, err, end = await runtime.exec(allowed, code=fetch)
        assert (out, end["exit_code"]) == ("b'hello from out'\n", 0), err
        other = (await runtime.create(template="python", allow_hosts=["*.example.com"]))["sandbox_id"]
        out, err, end = await runtime.exec(other, code=fetch)
        assert end["exit_code"] == 1 and "403" in err
        closed = (await runtime.create(template="python"))["sandbox_id"]  # no allowlist: no proxy at all
        out, err, end = await runtime.exec(
            closed, code=fetch.replace("urlopen(", "urlopen(", 1), env={"HTTP_PROXY": "http://127.0.0.1:3128"}
        )
        assert end["exit_code"] == 1 and end["limit"] == "network", err
    finally:
        server.close()
    log = (await runtime.client.get(f"/v1/sandboxes/{allowed}/egress", headers=runtime.headers())).json()
    assert [(c["host"], c["port"], c["allowed"]) for c in log["connections"]] == [("127.0.0.1", port, True)]
    log = (await runtime.client.get(f"/v1/sandboxes/{other}/egress", headers=runtime.headers())).json()
    assert [(c["host"], c["allowed"]) for c in log["connections"]] == [("127.0.0.1", False)]
    assert "not on this sandbox's allowlist" in log["connections"][0]["reason"]


async def test_output_streams_while_the_command_runs(make_runtime: Callable[..., Any]) -> None:
    runtime: Runtime = await make_runtime(Isolation.BUBBLEWRAP)
    box = (await runtime.create(template="python"))["sandbox_id"]
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.7)"
    arrivals = []
    started = asyncio.get_running_loop().time()
    async with runtime.client.stream(
        "POST", f"/v1/sandboxes/{box}/exec", json={"code": code}, headers=runtime.headers()
    ) as response:
        async for line in response.aiter_lines():
            arrivals.append((asyncio.get_running_loop().time() - started, json.loads(line)))
    assert [m for _, m in arrivals[:3]] == [{"stdout": "0\n"}, {"stdout": "1\n"}, {"stdout": "2\n"}]
    assert arrivals[0][0] < 1.0 < arrivals[-1][0]  # the first line came long before the end
    assert arrivals[-1][1]["exit_code"] == 0


async def test_rotating_the_master_key_rewraps_without_touching_data(
    make_runtime: Callable[..., Any],
) -> None:
    old, new = base64.b64encode(b"o" * 32).decode(), base64.b64encode(b"n" * 32).decode()
    admin = {"Authorization": "Bearer rot-admin"}
    first: Runtime = await make_runtime(
        Isolation.BUBBLEWRAP,
        state_master_keys=json.dumps({"k1": old}),
        state_active_key="k1",
        admin_token="rot-admin",
    )
    put = await first.client.put(
        "/v1/agents/analyst/memory/plan", json={"value": "keep me"}, headers=first.headers()
    )
    assert put.status_code == 200, put.text
    async with first.service.db.transaction() as session:
        before = (await session.execute(text("SELECT ciphertext FROM agent_memory"))).scalar_one()
    await first.stop()

    both = json.dumps({"k1": old, "k2": new})
    second: Runtime = await make_runtime(
        Isolation.BUBBLEWRAP, state_master_keys=both, state_active_key="k2", admin_token="rot-admin"
    )
    assert (await second.client.post("/admin/state/rotate-keys")).status_code == 401
    rotated = await second.client.post("/admin/state/rotate-keys", headers=admin)
    assert rotated.json() == {"rewrapped": 1, "active_key": "k2"}
    await second.stop()

    third: Runtime = await make_runtime(
        Isolation.BUBBLEWRAP, state_master_keys=json.dumps({"k2": new}), state_active_key="k2"
    )
    got = await third.client.get("/v1/agents/analyst/memory/plan", headers=third.headers())
    assert got.json()["value"] == "keep me"  # readable with the new master key alone
    async with third.service.db.transaction() as session:
        after = (await session.execute(text("SELECT ciphertext FROM agent_memory"))).scalar_one()
    assert bytes(after) == bytes(before)  # the data itself was not re-encrypted
