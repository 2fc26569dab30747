"""A long-lived sandbox with ``sandboxd`` inside, seen from the host.

A box is started once (``runsc run`` or ``bwrap`` around the daemon) and then driven over the
daemon's Unix socket: each command, file read or write is one connection, so a command costs a
fork inside the sandbox and no container start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from services.kit.sandbox.layer import Bind, Isolation, Limits, Sandbox, Spec

DAEMON_DIR = Path(__file__).parent / "inside"
INSIDE_CTL, INSIDE_DAEMON, INSIDE_WORKSPACE = "/sandbox/ctl", "/sandbox/daemon", "/workspace"
READ_LIMIT = 32 << 20


class BoxGone(RuntimeError):
    """The sandbox's daemon does not answer: it was deleted, reaped or died."""


@dataclass(frozen=True)
class BoxSpec:
    """How to start one box: the daemon's interpreter, what else it sees, its ceilings."""

    interpreter: str
    limits: Limits
    workspace_bytes: int
    binds: tuple[Bind, ...] = ()
    uid: int | None = None
    egress_port: int | None = None


class Box:
    def __init__(self, *, box_id: str, sandbox: Sandbox, ctl: Path, workspace: str,
                 proc: asyncio.subprocess.Process) -> None:
        self.box_id = box_id
        self.isolation = sandbox.isolation
        self.ctl = ctl
        self.workspace = workspace
        self._sandbox = sandbox
        self._proc = proc

    @property
    def socket_path(self) -> Path:
        return self.ctl / "sandboxd.sock"

    async def request(self, message: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield the daemon's answer lines."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=READ_LIMIT)
        except OSError as exc:
            raise BoxGone(f"sandbox {self.box_id} does not answer ({exc.strerror})") from exc
        try:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()
            while line := await reader.readline():
                yield json.loads(line)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        async for answer in self.request(message):
            return answer
        raise BoxGone(f"sandbox {self.box_id} closed the connection")

    async def put(self, path: str, data: bytes, *, mode: int = 0o644) -> dict[str, Any]:
        return await self.call({"op": "put", "path": path, "data": base64.b64encode(data).decode(),
                                "mode": mode})

    async def get(self, path: str, *, max_bytes: int) -> bytes:
        answer = await self.call({"op": "get", "path": path, "max_bytes": max_bytes})
        if not answer.get("ok"):
            raise ValueError(answer.get("error", "unknown error"))
        return base64.b64decode(answer["data"])

    def alive(self) -> bool:
        return self._proc.returncode is None

    async def destroy(self) -> None:
        """Kill everything in the box and remove its traces; idempotent."""
        if self.isolation is Isolation.GVISOR:
            await self._sandbox.cleanup(self.box_id)
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), timeout=5)
        shutil.rmtree(self.ctl, ignore_errors=True)


async def start_box(sandbox: Sandbox, *, box_id: str, spec: BoxSpec, ctl_root: Path,
                    ready_timeout_s: float = 15.0) -> Box:
    """Start a box and wait until its daemon answers."""
    ctl = ctl_root / box_id
    ctl.mkdir(parents=True, exist_ok=False)
    os.chmod(ctl, 0o700)
    if spec.uid is not None and os.geteuid() == 0:
        os.chown(ctl, spec.uid, spec.uid)
    launch = sandbox.launch_spec(box_id, _spec(sandbox.isolation, spec, ctl))
    proc = await asyncio.create_subprocess_exec(
        *launch.argv, preexec_fn=launch.preexec, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    workspace = str(ctl / "workspace") if sandbox.isolation is Isolation.RLIMITS else INSIDE_WORKSPACE
    box = Box(box_id=box_id, sandbox=sandbox, ctl=ctl, workspace=workspace, proc=proc)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        with contextlib.suppress(BoxGone, ValueError):
            if (await box.call({"op": "ping"})).get("ok"):
                return box
        if proc.returncode is not None or time.monotonic() > deadline:
            await box.destroy()
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip() or "no answer in time"
            raise RuntimeError(f"sandbox {box_id} did not start under {sandbox.isolation}: {err[-500:]}")
        await asyncio.sleep(0.002)


def _spec(isolation: Isolation, spec: BoxSpec, ctl: Path) -> Spec:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "MALLOC_ARENA_MAX": "2", "HOME": INSIDE_WORKSPACE}
    if isolation is Isolation.RLIMITS:
        (ctl / "workspace").mkdir()
        daemon = str(DAEMON_DIR / "sandboxd.py")
        argv = [spec.interpreter, "-I", "-S", daemon, str(ctl), str(ctl / "workspace")]
        return Spec(command=argv, env=env, cwd=str(ctl), limits=spec.limits, uid=spec.uid)
    argv = [spec.interpreter, "-I", "-S", f"{INSIDE_DAEMON}/sandboxd.py", INSIDE_CTL, INSIDE_WORKSPACE,
            *([str(spec.egress_port)] if spec.egress_port else [])]
    return Spec(
        command=argv, env=env, cwd="/", uid=spec.uid, host_uds=True, limits=spec.limits, minimal_root=True,
        binds=(Bind(DAEMON_DIR, INSIDE_DAEMON), Bind(ctl, INSIDE_CTL, writable=True), *spec.binds),
        tmpfs=(("/tmp", spec.workspace_bytes), (INSIDE_WORKSPACE, spec.workspace_bytes)),
    )


async def reap_orphans(sandbox: Sandbox, ctl_root: Path) -> list[str]:
    """Kill every box a previous run of this runtime left behind; their ids."""
    found = sorted(_entries(ctl_root))
    marker = str(ctl_root) + os.sep
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in arg for arg in proc.info["cmdline"] or ()):
                proc.send_signal(signal.SIGKILL)
    containers = await sandbox.containers()
    for box_id in sorted(set(found) | set(containers)):
        await sandbox.cleanup(box_id)
    found = sorted(set(found) | set(containers))
    for box_id in found:
        shutil.rmtree(ctl_root / box_id, ignore_errors=True)
    if found:
        import structlog  # here: the sandbox layer is imported by each Ray job's lean entrypoint

        structlog.get_logger(__name__).warning("sandbox.orphans_reaped", count=len(found), ids=found[:20])
    return found


def _entries(folder: Path) -> list[str]:
    return os.listdir(folder) if folder.is_dir() else []
