"""One notebook server (JupyterLab) in a sandbox with no network, seen from the host.

The sandbox sees a minimal read-only root: the host's system folders (``/usr``, ``/etc``, ...)
and, where they are on the host, the interpreter's installation and virtualenv (JupyterLab,
its assets, ipykernel). Nothing of ``/root``, ``/home``, ``/var``, ``/run`` (host sockets) or
other tenants' folders is there. Read-write it has its socket folder at ``/srv/jupyter``
(``host_uds``: gVisor makes the Jupyter socket a real host socket), its work folder at
``/home/jovyan/work`` (Jupyter's root), and tmpfs for HOME and ``/tmp`` (Jupyter's and
IPython's folders). No network: only loopback, which the kernel's ZMQ channels use. Jupyter has
no token: its socket is in a 0700 folder of the platform's user, reached only through the
platform's proxy, which checks the team's key.

The work folder is a copy, not the volume itself: it is seeded from the volume at start and
copied back by ``save`` (and by ``stop`` and ``reap``, so a stopped server never takes work
with it). A copy lets the host choose what reaches the volume — regular files, notebooks up to
64 MiB and other files up to 8 MiB, never links or FIFOs the sandbox planted — and the
sandbox never writes into a team's persistent storage directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import aiohttp
import structlog

from services.kit.sandbox import Bind, Isolation, Limits, Sandbox, Spec
from services.provisioner.processes import kill_orphans, stop_tree

log = structlog.get_logger(__name__)
SAFE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
CONTAINER_PREFIX = "aicloud-notebook-"
SOCKET, RECORD, SERVER_LOG = "jupyter.sock", "notebook.json", "server.log"
INSIDE_SRV, HOME = "/srv/jupyter", "/home/jovyan"
INSIDE_WORK = f"{HOME}/work"
# RLIMIT_AS is per process (the server, each kernel, each terminal), and counts address space
# reserved rather than used: numpy and OpenBLAS reserve generously.
DEFAULT_MEMORY = 4 << 30
NOTEBOOK_MAX, FILE_MAX, SAVE_MAX = 64 << 20, 8 << 20, 512 << 20


@dataclass(frozen=True)
class Activity:
    """Jupyter's own record: API requests and kernel messages move ``last_activity``."""

    last_activity: datetime
    kernels: int
    connections: int
    busy: bool


class Notebook:
    def __init__(self, *, notebook_id: str, team: str, sandbox: Sandbox, folder: Path, volume: Path,
                 proc: asyncio.subprocess.Process) -> None:
        self.notebook_id = notebook_id
        self.team = team
        self.container_id = CONTAINER_PREFIX + notebook_id
        self.folder = folder
        self.volume = volume
        self.base_url = base_url(notebook_id)
        self._sandbox = sandbox
        self._proc = proc
        self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                                              timeout=aiohttp.ClientTimeout(total=5))
        self._stopped = False

    @property
    def socket_path(self) -> Path:
        return self.folder / "srv" / SOCKET

    @property
    def work(self) -> Path:
        return self.folder / "work"

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.returncode is None

    async def status(self) -> Activity:
        """What Jupyter says; reading it is not activity (``no_track_activity``)."""
        status = await self._get("api/status")
        kernels = await self._get("api/kernels?no_track_activity=1")
        return Activity(last_activity=datetime.fromisoformat(status["last_activity"]),
                        kernels=int(status["kernels"]), connections=int(status["connections"]),
                        busy=any(k.get("execution_state") == "busy" for k in kernels))

    async def _get(self, path: str) -> Any:
        async with self._session.get(f"http://notebook{self.base_url}{path}") as response:
            response.raise_for_status()
            return await response.json()

    async def save(self, volume_dir: Path) -> list[str]:
        """Copy the notebooks and small files to ``volume_dir/<notebook_id>/``; their names."""
        return await asyncio.to_thread(copy_tree, self.work, volume_dir / self.notebook_id)

    async def stop(self) -> None:
        """SIGTERM (Jupyter shuts its kernels down), a grace, SIGKILL; then the work is saved to
        the volume and the folder goes. Returns when no process of it runs. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await stop_tree(self._sandbox, self.container_id, self._proc)
        await self._session.close()
        if await _rescue(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
        log.info("notebook.server_stopped", notebook_id=self.notebook_id, exit_code=self._proc.returncode)


def base_url(notebook_id: str) -> str:
    return f"/notebooks/{notebook_id}/"


async def start_notebook(sandbox: Sandbox, *, notebook_id: str, team: str, root: Path, volume: Path,
                         ready_timeout_s: float = 60, memory_bytes: int = DEFAULT_MEMORY) -> Notebook:
    """Start JupyterLab for ``notebook_id``, its work seeded from ``volume/<notebook_id>/``;
    return once it answers on its socket."""
    if not SAFE_ID.match(notebook_id):
        raise ValueError(f"notebook id {notebook_id!r} must be 1-63 lowercase letters, digits and '-', "
                         "starting with a letter or digit")
    if sandbox.isolation is Isolation.RLIMITS:
        raise RuntimeError("notebooks need gVisor or bubblewrap: without them a notebook would have the "
                           "host's network and files")
    root, volume = await asyncio.to_thread(root.resolve), await asyncio.to_thread(volume.resolve)
    folder = root / notebook_id
    if len(str(folder / "srv" / SOCKET)) >= 108:  # sun_path
        raise ValueError(f"socket path {folder / 'srv' / SOCKET} is too long for a Unix socket: "
                         "use a shorter root")
    seeded = await asyncio.to_thread(_prepare, folder, team=team, volume=volume)
    spec = _spec(notebook_id, folder=folder, memory_bytes=memory_bytes)
    launch = sandbox.launch_spec(CONTAINER_PREFIX + notebook_id, spec)
    started = time.monotonic()
    with (folder / SERVER_LOG).open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, preexec_fn=launch.preexec, cwd=folder, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True)
    notebook = Notebook(notebook_id=notebook_id, team=team, sandbox=sandbox, folder=folder, volume=volume,
                        proc=proc)
    await _until_ready(notebook, proc, ready_timeout_s)
    log.info("notebook.server_started", notebook_id=notebook_id, team=team, isolation=str(sandbox.isolation),
             seeded=len(seeded), start_s=round(time.monotonic() - started, 2), pid=proc.pid)
    return notebook


async def _until_ready(notebook: Notebook, proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if notebook.socket_path.exists():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                await notebook.status()
                return
        if proc.returncode is not None or time.monotonic() > deadline:
            state = "did not answer in time" if proc.returncode is None else f"exited with {proc.returncode}"
            detail = (notebook.folder / SERVER_LOG).read_text(errors="replace")[-2000:].strip() or "no output"
            await notebook.stop()
            raise RuntimeError(f"notebook {notebook.notebook_id} {state}: {detail}")
        await asyncio.sleep(0.05)


# ``python -m jupyterlab``, except that the socket's mode is set only where that is possible:
# under gVisor a --host-uds socket cannot be chmod-ed (EPERM), and Jupyter would not listen.
# The socket's host folder (0700) is what keeps other users out.
LAUNCHER = (
    "import contextlib, os, socket, sys\nimport jupyter_server.serverapp as app\n"
    "from jupyterlab.labapp import main\n"
    "def bind(file, mode=0o600, backlog=128):\n"
    "    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "    sock.setblocking(False)\n    sock.bind(file)\n"
    "    with contextlib.suppress(PermissionError):\n        os.chmod(file, mode)\n"
    "    sock.listen(backlog)\n    return sock\n"
    "app.bind_unix_socket = bind\nsys.exit(main())\n"
)


def jupyter_argv(notebook_id: str) -> list[str]:
    """JupyterLab on a Unix socket under the proxy's prefix, nothing that reaches the internet."""
    return [
        sys.executable, "-c", LAUNCHER, "--no-browser",
        f"--ServerApp.sock={INSIDE_SRV}/{SOCKET}", "--ServerApp.sock_mode=0600",
        f"--ServerApp.base_url={base_url(notebook_id)}", f"--ServerApp.root_dir={INSIDE_WORK}",
        # The proxy authenticates every request, by a header or a SameSite=Strict cookie, so a
        # cross-site request never gets through it: Jupyter's token and XSRF cookie would only
        # make API clients fetch a page first. Its Origin checks stay on.
        "--IdentityProvider.token=", "--ServerApp.disable_check_xsrf=True",
        "--ServerApp.allow_remote_access=True", "--ServerApp.allow_root=True",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]


ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": HOME,
       "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "xterm-256color", "MALLOC_ARENA_MAX": "2",
       "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_CONFIG_DIR": f"{HOME}/.jupyter",
       "JUPYTER_DATA_DIR": f"{HOME}/.local/share/jupyter",
       "JUPYTER_RUNTIME_DIR": f"{HOME}/.local/share/jupyter/runtime", "IPYTHONDIR": f"{HOME}/.ipython"}


def _spec(notebook_id: str, *, folder: Path, memory_bytes: int) -> Spec:
    # The interpreter's installation and virtualenv (JupyterLab's assets, the kernel spec) where
    # they are on the host; parents first, since one may hold the other (binds nest).
    code = sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}, key=lambda p: len(p.parts))
    return Spec(command=jupyter_argv(notebook_id), env=ENV, cwd=INSIDE_WORK, host_uds=True,
                hostname="notebook", limits=Limits(memory_bytes=memory_bytes), minimal_root=True,
                tmpfs=(("/tmp", 512 << 20), ("/home", 256 << 20)),
                binds=(*(Bind(p, str(p)) for p in code), Bind(folder / "srv", INSIDE_SRV, writable=True),
                       Bind(folder / "work", INSIDE_WORK, writable=True)))


def _prepare(folder: Path, *, team: str, volume: Path) -> list[str]:
    """The notebook's folder: socket and work folders, its record (for ``reap``), the work
    seeded from the volume; the seeded files' names."""
    volume.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=False)
    os.chmod(folder, 0o700)
    (folder / "srv").mkdir()
    (folder / "work").mkdir()
    (folder / RECORD).write_text(json.dumps({"team": team, "volume": str(volume)}))
    return copy_tree(volume / folder.name, folder / "work")


def copy_tree(source: Path, dest: Path) -> list[str]:
    """Copy ``source``'s visible regular files under the size caps to ``dest``; their names.

    Walks by directory descriptors and opens with O_NOFOLLOW, so a link the sandbox made (or
    swaps in while this runs) is never followed out of ``source``. Unchanged files (same size
    and mtime) are not copied again; nothing is deleted from ``dest``."""
    saved: list[str] = []
    total = 0
    if not source.is_dir():
        return saved
    for dirpath, dirnames, filenames, dirfd in os.fwalk(source):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(n for n in filenames if not n.startswith(".")):
            rel = Path(dirpath, name).relative_to(source)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
            except OSError:  # a link (ELOOP), or gone since the listing
                continue
            with os.fdopen(fd, "rb") as src:
                info = os.fstat(src.fileno())
                cap = NOTEBOOK_MAX if name.endswith(".ipynb") else FILE_MAX
                if not stat.S_ISREG(info.st_mode) or info.st_size > cap or total + info.st_size > SAVE_MAX:
                    log.warning("notebook.file_not_saved", file=str(rel), size=info.st_size)
                    continue
                total += info.st_size
                _copy_file(src, info, dest / rel)
                saved.append(str(rel))
    return saved


def _copy_file(src: IO[bytes], info: os.stat_result, target: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        have = target.stat()
        if (have.st_size, have.st_mtime_ns) == (info.st_size, info.st_mtime_ns):
            return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        shutil.copyfileobj(src, out)
    os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.replace(partial, target)


async def _rescue(folder: Path) -> bool:
    """Save a stopped notebook's work to the volume its record names; False if that failed."""
    try:
        record = json.loads((folder / RECORD).read_text())
        await asyncio.to_thread(copy_tree, folder / "work", Path(record["volume"]) / folder.name)
    except FileNotFoundError:
        return True  # nothing was ever started here
    except (OSError, ValueError, KeyError):
        log.exception("notebook.save_failed", folder=str(folder), detail="the work folder is kept")
        return False
    return True


async def reap(sandbox: Sandbox, root: Path) -> list[str]:
    """Kill every notebook server a previous provisioner left under ``root``, save each one's
    work to its team's volume, and remove its folder; their ids."""
    root = await asyncio.to_thread(root.resolve)
    reaped = await kill_orphans(sandbox, root, CONTAINER_PREFIX)
    for notebook_id in reaped:
        if await _rescue(root / notebook_id):
            shutil.rmtree(root / notebook_id, ignore_errors=True)
    if reaped:
        log.warning("notebook.orphans_reaped", count=len(reaped), ids=reaped[:20])
    return reaped
