"""Stopping the long-lived sandboxes (model replicas, notebook servers) and finding the ones a
previous provisioner left behind. Both kinds live in a folder per id under a root and, under
gVisor, in a container named prefix + id; their processes are killed as whole trees and waited
for, so "stopped" means no process of theirs runs any more."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from services.kit.sandbox import Sandbox

STOP_GRACE_S = 5.0


async def stop_tree(sandbox: Sandbox, container_id: str, proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, a short grace, SIGKILL; then the container goes. Returns when every process
    the launcher had started is dead (bwrap's inner half may outlive its launcher briefly)."""
    tree = _tree(proc.pid)
    if proc.returncode is None:
        await sandbox.signal(container_id, proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=STOP_GRACE_S)
        except TimeoutError:
            await sandbox.signal(container_id, proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=STOP_GRACE_S)
    await sandbox.cleanup(container_id)
    await _until_dead(tree)


async def kill_orphans(sandbox: Sandbox, root: Path, prefix: str) -> list[str]:
    """Kill everything a previous process left under ``root``; the ids found (folders, or
    gVisor containers named ``prefix + id``). bwrap's command line names the folder, gVisor's
    processes name the container; their children name neither, so whole trees are killed."""
    root = await asyncio.to_thread(root.resolve)
    found = set(os.listdir(root)) if root.is_dir() else set()
    containers = {c.removeprefix(prefix) for c in await sandbox.containers() if c.startswith(prefix)}
    marker, ids = str(root) + os.sep, {prefix + n for n in containers | found}
    killed: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in arg or arg.rpartition(os.sep)[2] in ids for arg in proc.info["cmdline"] or ()):
                killed += _tree(proc.pid)
    for proc in killed:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGKILL)
    await _until_dead(killed)
    for container_id in sorted(prefix + n for n in containers):
        await sandbox.cleanup(container_id)
    return sorted(found | containers)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


async def _until_dead(procs: list[psutil.Process]) -> None:
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:  # death is not an event one can wait for: poll
        if not any(_running(p) for p in procs):
            return
        await asyncio.sleep(0.005)


def _running(proc: psutil.Process) -> bool:
    """Not yet dead (a zombie is dead: only its parent's wait is missing)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
