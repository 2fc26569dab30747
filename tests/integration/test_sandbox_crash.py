"""A runtime killed mid-exec leaves no sandbox behind once it is back: its restart kills every
box the dead process left running and records them deleted with ``runtime_restarted``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from services.kit.sandbox import Isolation, available
from tests.integration.sandbox_fixtures import sandbox_root
from tests.integration.test_sandboxes import sandbox_processes_under

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module], env={**os.environ, **env},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


async def ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient() as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready: {log.read_text()[-2000:]}")


@pytest.mark.parametrize("isolation", [Isolation.GVISOR, Isolation.BUBBLEWRAP])
async def test_a_runtime_killed_mid_exec_leaves_no_sandbox_after_restart(
        nats_url: str, database_url: str, prefix: str, tmp_path: Path, isolation: Isolation) -> None:
    if isolation not in available():
        pytest.skip(f"{isolation} is not installed here (apt-get install runsc bubblewrap)")
    root = sandbox_root(prefix)
    catalog_port, runtime_port = free_port(), free_port()
    common = {"NATS_URL": nats_url, "DATABASE_URL": database_url, "SUBJECT_PREFIX": prefix}
    catalog_env = {f"AICLOUD_CATALOG_{k}": v for k, v in common.items()} | {
        "AICLOUD_CATALOG_HTTP_PORT": str(catalog_port), "AICLOUD_CATALOG_DB_SCHEMA": f"{prefix}_catalog",
        "AICLOUD_CATALOG_DEMO_KEYS_FILE": str(tmp_path / "keys.json")}
    runtime_env = {f"AICLOUD_AGENT_RUNTIME_{k}": v for k, v in common.items()} | {
        "AICLOUD_AGENT_RUNTIME_HTTP_PORT": str(runtime_port),
        "AICLOUD_AGENT_RUNTIME_DB_SCHEMA": f"{prefix}_ar",
        "AICLOUD_AGENT_RUNTIME_CATALOG_URL": f"http://127.0.0.1:{catalog_port}",
        "AICLOUD_AGENT_RUNTIME_SANDBOX_DIR": str(root), "AICLOUD_AGENT_RUNTIME_ISOLATION": isolation.value,
        "AICLOUD_AGENT_RUNTIME_POOLS": "false"}
    log = tmp_path / "services.log"
    catalog = spawn("services.catalog", catalog_env, log)
    runtime = spawn("services.agent_runtime", runtime_env, log)
    try:
        await ready(f"http://127.0.0.1:{catalog_port}", catalog, log)
        await ready(f"http://127.0.0.1:{runtime_port}", runtime, log)
        key = json.loads((tmp_path / "keys.json").read_text())["legal"]
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime_port}",
                                   headers={"Authorization": f"Bearer {key}"}, timeout=30)
        box = (await client.post("/v1/sandboxes", json={"template": "python"})).json()["sandbox_id"]
        running = asyncio.create_task(client.post(f"/v1/sandboxes/{box}/exec",
                                                  json={"command": ["sleep", "300"], "timeout_s": 60}))
        await asyncio.sleep(1.0)
        before = sandbox_processes_under(root)
        assert before, "the sandbox should be running"
        runtime.send_signal(signal.SIGKILL)
        runtime.wait()
        with contextlib.suppress(httpx.HTTPError):
            await running  # the exec's connection died with the runtime
        await asyncio.sleep(0.5)
        if isolation is Isolation.GVISOR:
            assert sandbox_processes_under(root), "a gVisor sandbox outlives its runtime until reconciled"
        else:
            assert not sandbox_processes_under(root), "bubblewrap's --die-with-parent ends it at once"

        runtime = spawn("services.agent_runtime", runtime_env, log)
        await ready(f"http://127.0.0.1:{runtime_port}", runtime, log)
        assert not sandbox_processes_under(root), [p.cmdline() for p in sandbox_processes_under(root)]
        if isolation is Isolation.GVISOR:
            listed = subprocess.run(["runsc", "--root", str(root / "state"), "list", "-quiet"],
                                    capture_output=True, text=True)
            assert listed.stdout.split() == []
        gone = await client.get(f"/v1/sandboxes/{box}")
        assert gone.status_code == 410 and "runtime_restarted" in gone.json()["detail"]
        await client.aclose()
    finally:
        for proc in (runtime, catalog):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
