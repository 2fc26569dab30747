"""One model-server replica in a sandbox, seen from the host: started, probed, stopped.

Under gVisor or bubblewrap a replica sees a minimal read-only root (the host's system folders),
the interpreter and its site-packages and the server's own folder read-only where they are on
the host, the model read-only at ``/model``, and its own folder read-write at ``/serve``, where
it creates ``model.sock`` (``host_uds``: gVisor makes it a real host socket); no network.
A minimal root because bubblewrap cannot make ``/model`` or ``/serve`` on the read-only host
root, and because a model server has no business reading the rest of the host. It runs as
root in the sandbox, as jobs do: the interpreter may live under ``/root`` (pyenv), which
another uid cannot read, so there is no per-replica uid and no pids limit (RLIMIT_NPROC counts
per uid). Under plain rlimits it is a limited process on the host paths.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from services.kit.sandbox import Bind, Isolation, Limits, Sandbox, Spec
from services.provisioner.processes import kill_orphans, stop_tree

log = structlog.get_logger(__name__)
SERVER = Path(__file__).with_name("modelserver.py")
SOCKET, INSIDE_MODEL, INSIDE_SERVE = "model.sock", "/model", "/serve"
CONTAINER_PREFIX = "aicloud-model-"
SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# RLIMIT_AS counts address space reserved, not memory used, and numpy, OpenBLAS and the
# tokenizer reserve generously: MiniLM's server peaks near 0.5 GB of it (64 inputs of 256
# tokens); the default leaves room for larger BERTs.
DEFAULT_MEMORY = 4 << 30
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1",
       "MALLOC_ARENA_MAX": "2"}


class Replica:
    def __init__(self, *, replica_id: str, sandbox: Sandbox, folder: Path,
                 proc: asyncio.subprocess.Process) -> None:
        self.replica_id = replica_id
        self.container_id = CONTAINER_PREFIX + replica_id
        self.folder = folder
        self.kind = ""
        self.team = ""  # whose endpoint it serves: its GPU samples are labelled with it
        self._sandbox = sandbox
        self._proc = proc
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket_path)))
        self._stopped = False

    @property
    def socket_path(self) -> Path:
        return self.folder / SOCKET

    @property
    def url(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.returncode is None

    async def health(self) -> bool:
        return await self._probe() is not None

    async def counters(self) -> dict[str, int] | None:
        """Requests served and in flight, or None when the server does not answer."""
        answer = await self._probe()
        if answer is None:
            return None
        return {"requests": int(answer.get("requests", 0)), "in_flight": int(answer.get("in_flight", 0))}

    async def _probe(self) -> dict[str, Any] | None:
        """The server's /healthz answer, or None when it does not give a healthy one."""
        try:
            async with self._session.get("http://replica/healthz",
                                         timeout=aiohttp.ClientTimeout(total=2)) as response:
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if response.status == 200 and body.get("ok") is True else None

    async def stop(self) -> None:
        """SIGTERM, a short grace, SIGKILL; then the container and the folder go. Returns when
        no process of the replica runs any more. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await stop_tree(self._sandbox, self.container_id, self._proc)
        await self._session.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log_tail(self, limit: int = 2000) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-limit:].strip() if path.is_file() else ""


async def start_replica(sandbox: Sandbox, *, replica_id: str, model_dir: Path, name: str, root: Path,
                        ready_timeout_s: float = 30, memory_bytes: int = DEFAULT_MEMORY) -> Replica:
    """Start a model server on ``model_dir`` in the sandbox; return once it answers /healthz."""
    if not SAFE_ID.match(replica_id):
        raise ValueError(f"replica id {replica_id!r} must be lowercase letters, digits and '-'")
    folder = root / replica_id
    if len(str(folder / SOCKET)) >= 108:  # sun_path
        raise ValueError(f"socket path {folder / SOCKET} is too long for a Unix socket: use a shorter root")
    spec = _spec(sandbox.isolation, model_dir=model_dir, folder=folder, name=name, memory_bytes=memory_bytes)
    folder.mkdir(parents=True, exist_ok=False)
    launch = sandbox.launch_spec(CONTAINER_PREFIX + replica_id, spec)
    with (folder / "server.log").open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, preexec_fn=launch.preexec, env=ENV, cwd=folder, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True,
        )
    replica = Replica(replica_id=replica_id, sandbox=sandbox, folder=folder, proc=proc)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        answer = await replica._probe() if replica.socket_path.exists() else None
        if answer is not None:
            break
        if proc.returncode is not None or time.monotonic() > deadline:
            detail = replica.log_tail() or "no output"
            state = "did not answer in time" if proc.returncode is None else f"exited with {proc.returncode}"
            await replica.stop()
            raise RuntimeError(f"model replica {replica_id} {state} under {sandbox.isolation}: {detail}")
        await asyncio.sleep(0.02)
    replica.kind = answer["kind"]
    log.info("replica.started", replica_id=replica_id, model=name, kind=replica.kind,
             isolation=sandbox.isolation, pid=proc.pid)
    return replica


def _spec(isolation: Isolation, *, model_dir: Path, folder: Path, name: str, memory_bytes: int) -> Spec:
    limits = Limits(memory_bytes=memory_bytes)
    server = [sys.executable, "-B", "-E", "-s", str(SERVER)]
    if isolation is Isolation.RLIMITS:
        argv = [*server, "--model-dir", str(model_dir.resolve()), "--socket", str(folder / SOCKET),
                "--name", name]
        return Spec(command=argv, env=ENV, cwd=str(folder), limits=limits)
    source, inside = model_mount(model_dir)
    argv = [*server, "--model-dir", inside, "--socket", f"{INSIDE_SERVE}/{SOCKET}", "--name", name]
    code = [Bind(p, str(p)) for p in _code_dirs()]
    return Spec(command=argv, env=ENV, cwd=INSIDE_SERVE, limits=limits, host_uds=True, hostname="model",
                minimal_root=True, tmpfs=(("/tmp", 64 << 20),),
                binds=(*code, Bind(source, INSIDE_MODEL), Bind(folder, INSIDE_SERVE, writable=True)))


def _code_dirs() -> list[Path]:
    """What the server needs of the host: this interpreter's installation and virtualenv, and
    the server's folder; parents first, since one may hold another (binds nest)."""
    found = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), SERVER.parent}
    return sorted(found, key=lambda p: len(p.parts))


def model_mount(model_dir: Path) -> tuple[Path, str]:
    """(the folder bound at /model, where the model is inside). A Hugging Face cache snapshot
    links its files to ``../../blobs``, so its whole repo folder is bound; links that would
    leave what is bound, or absolute ones, cannot be followed in the sandbox."""
    real = model_dir.resolve()
    source = real.parent.parent if real.parent.name == "snapshots" else real
    for path in (p for p in real.rglob("*") if p.is_symlink()):
        if os.path.isabs(os.readlink(path)) or not path.resolve().is_relative_to(source):
            raise ValueError(f"{path} links to {os.readlink(path)}, outside the model folder: copy the "
                             "model into a folder of plain files")
    return source, str(Path(INSIDE_MODEL) / real.relative_to(source))


async def reap(sandbox: Sandbox, root: Path) -> list[str]:
    """Kill every replica a previous provisioner left under ``root``; their ids."""
    reaped = await kill_orphans(sandbox, root, CONTAINER_PREFIX)
    for replica_id in reaped:
        shutil.rmtree(root / replica_id, ignore_errors=True)
    if reaped:
        log.warning("replica.orphans_reaped", count=len(reaped), ids=reaped[:20])
    return reaped
