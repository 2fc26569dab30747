"""`dev restart` of a component that died on its own: what is left of it is cleared first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from aicloud.local import servers, supervisor

pytestmark = pytest.mark.unit


def test_a_dead_leaders_group_is_killed_and_an_unreaped_zombie_is_reported(tmp_path: Path) -> None:
    marker = tmp_path / "child.pid"
    leader = subprocess.Popen(["sh", "-c", f"sleep 60 & echo $! > {marker}; wait"], start_new_session=True)
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(marker.read_text())
    os.kill(leader.pid, signal.SIGKILL)  # like PostgreSQL's postmaster SIGKILLed: its backends live on
    try:
        # the leader is our child and we do not wait for it: a zombie nobody reaped, as PID 1 may leave it
        assert supervisor.settle(leader.pid, timeout=1) is False
        assert not supervisor.alive(child) and not supervisor.alive(leader.pid)
    finally:
        leader.wait(5)
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)
    assert supervisor.settle(leader.pid, timeout=1) is True  # reaped: gone


def test_only_the_lock_file_of_the_dead_postmaster_is_removed(tmp_path: Path) -> None:
    lock = tmp_path / "postmaster.pid"
    lock.write_text("4242\n/data\n")
    servers.remove_stale_postmaster_pid(tmp_path, 4243)
    assert lock.exists(), "another postmaster's lock stays"
    servers.remove_stale_postmaster_pid(tmp_path, 4242)
    assert not lock.exists()
    servers.remove_stale_postmaster_pid(tmp_path, 4242)  # none: nothing to do
