"""Sandboxes for local jobs: gVisor (``runsc run`` with an OCI bundle), else bubblewrap, else a
plain rlimited process, which is logged as a warning because it isolates nothing.

Inside gVisor or bubblewrap a job sees the host's root read-only, its workspace read-write at
``/workspace``, its dataset read-only at ``/data``, a private ``/tmp``, and no network. The
platform's own state (every job's workspace, the artifact store, ``$AICLOUD_HOME`` with its
keys and databases) is masked by empty tmpfs mounts; the folders of script files named in the
command are mounted read-only where they are, so ``python3 /path/train.py`` works wherever
the code lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import psutil

WORKSPACE, DATA = "/workspace", "/data"


class Isolation(StrEnum):
    GVISOR = "gvisor"
    BUBBLEWRAP = "bubblewrap"
    RLIMITS = "rlimits"


def available() -> list[Isolation]:
    """What this machine can do, strongest first."""
    found = []
    if shutil.which("runsc") and os.geteuid() == 0:
        found.append(Isolation.GVISOR)
    if shutil.which("bwrap"):
        found.append(Isolation.BUBBLEWRAP)
    return [*found, Isolation.RLIMITS]


def choose(preference: str = "auto") -> Isolation:
    options = available()
    if preference != "auto":
        wanted = Isolation(preference)
        if wanted not in options:
            raise RuntimeError(f"isolation {wanted} is not available here (have: {', '.join(options)})")
        return wanted
    if options[0] is Isolation.RLIMITS:
        import structlog  # here: this layer is imported by each Ray job's lean entrypoint

        structlog.get_logger(__name__).warning(
            "sandbox.unavailable", detail="neither runsc nor bwrap found: jobs run as plain "
            "rlimited processes without filesystem or network isolation")
    return options[0]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    preexec: Callable[[], None] | None


@dataclass(frozen=True)
class Limits:
    """Per-process limits; ``pids`` needs ``Spec.uid`` (RLIMIT_NPROC counts per user)."""

    memory_bytes: int
    max_open_files: int = 4096
    pids: int | None = None
    cpu_seconds: int | None = None
    file_bytes: int | None = None


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str
    writable: bool = False


@dataclass(frozen=True)
class Spec:
    """What runs in a sandbox and what it sees; the root is always the host's, read-only."""

    command: list[str]
    env: dict[str, str]
    cwd: str
    binds: tuple[Bind, ...] = ()
    tmpfs: tuple[tuple[str, int | None], ...] = (("/tmp", None),)
    limits: Limits = field(default_factory=lambda: Limits(memory_bytes=2 << 30))
    uid: int | None = None
    host_uds: bool = False
    hostname: str = "sandbox"
    network: bool = False
    """The host's network (for products that allow egress); by default the sandbox has none."""
    minimal_root: bool = False
    """A fresh read-only root with only the host's system folders (EXPOSED) in it, instead of
    the whole host root: nothing of /home, /root, /var or /run is there to read, and mount
    points are made in the sandbox's own root, never on the host."""


class Sandbox:
    def __init__(self, isolation: Isolation, *, state_dir: Path,
                 hidden: Sequence[Path] = ()) -> None:
        self.isolation = isolation
        self._state = state_dir
        # Paths under /tmp are hidden already: /tmp is private.
        self._hidden = sorted({p.resolve() for p in [state_dir, *hidden]
                               if not p.resolve().is_relative_to("/tmp")})

    def container_id(self, team: str, job_id: str) -> str:
        return f"aicloud-{team}-{job_id}"

    def paths(self, workspace: Path, dataset: Path | None) -> tuple[str, str | None]:
        """Where the job sees its workspace and dataset."""
        if self.isolation is Isolation.RLIMITS:
            return str(workspace), str(dataset) if dataset else None
        return WORKSPACE, DATA if dataset else None

    def launch(self, *, container_id: str, command: list[str], env: dict[str, str], workspace: Path,
               dataset: Path | None, limits: Limits, network: bool = False,
               runtime: Path | None = None) -> Launch:
        """A job: its workspace read-write, its dataset, script folders and ``runtime`` (the
        Python environment its PATH names first) read-only, each where the host has it; the
        host's network only with ``network`` (its product allows egress)."""
        if self.isolation is Isolation.RLIMITS:
            return Launch(command, _rlimits(limits))
        shared = sorted({*code_dirs(command), *([runtime.resolve()] if runtime else [])})
        binds = [*(Bind(d, str(d)) for d in shared), Bind(workspace, WORKSPACE, writable=True)]
        if dataset is not None:
            binds.append(Bind(dataset, DATA))
        return self.launch_spec(container_id, Spec(command=command, env=env, cwd=WORKSPACE,
                                                   binds=tuple(binds), limits=limits, hostname="job",
                                                   network=network))

    def launch_spec(self, container_id: str, spec: Spec) -> Launch:
        if self.isolation is Isolation.GVISOR:
            bundle = self._write_bundle(container_id, spec)
            # A minimal root's mounts are the host's system folders, read-only and not changed
            # under a running sandbox: gVisor may cache them (Python starts 25 % faster).
            argv = ["runsc", "--root", str(self._state),
                    "--network=host" if spec.network else "--network=none", "--ignore-cgroups",
                    *(["--host-uds=create"] if spec.host_uds else []),
                    *(["--file-access-mounts=exclusive"] if spec.minimal_root else []),
                    "run", "--bundle", str(bundle), container_id]
            return Launch(argv, None)
        if self.isolation is Isolation.BUBBLEWRAP and spec.minimal_root and _WRAPPERS:
            # setpriv + prlimit instead of a preexec hook: without one, the child is spawned
            # with vfork, which does not copy (and block on) a large parent's page tables.
            return Launch([*_wrapped(spec.limits, spec.uid), *self._bwrap_argv(spec)], None)
        if self.isolation is Isolation.BUBBLEWRAP:
            return Launch(self._bwrap_argv(spec), _rlimits(spec.limits, uid=spec.uid))
        return Launch(spec.command, _rlimits(spec.limits, uid=spec.uid))

    def _bwrap_argv(self, spec: Spec) -> list[str]:
        tmpfs = [*spec.tmpfs, *((str(p), None) for p in self._hidden)]
        root = ["--ro-bind", "/", "/"]
        if spec.minimal_root:
            root = [a for name, link in exposed() for a in
                    (("--symlink", link, f"/{name}") if link else ("--ro-bind", f"/{name}", f"/{name}"))]
        return ["bwrap", *root, "--dev", "/dev", "--proc", "/proc",
                *[a for target, size in tmpfs
                  for a in ([*(["--size", str(size)] if size else []), "--tmpfs", target])],
                *[a for b in spec.binds
                  for a in ("--bind" if b.writable else "--ro-bind", str(b.source), b.target)],
                *(["--remount-ro", "/"] if spec.minimal_root else []),
                "--unshare-all", *(["--share-net"] if spec.network else []), "--die-with-parent",
                "--hostname", spec.hostname,
                "--chdir", spec.cwd, "--clearenv",
                *[arg for k, v in spec.env.items() for arg in ("--setenv", k, v)], "--", *spec.command]

    def _write_bundle(self, container_id: str, spec: Spec) -> Path:
        bundle = self._state / "bundles" / container_id
        bundle.mkdir(parents=True, exist_ok=True)
        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            *({"destination": f"/{name}", "type": "bind", "source": f"/{name}", "options": ["rbind", "ro"]}
              for name, link in (exposed() if spec.minimal_root else []) if link is None),
            *({"destination": target, "type": "tmpfs", "source": "tmpfs",
               "options": [*([f"size={size}"] if size else []), "mode=1777"]}
              for target, size in spec.tmpfs),
            *({"destination": str(p), "type": "tmpfs", "source": "tmpfs"} for p in self._hidden),
            *({"destination": b.target, "type": "bind", "source": str(b.source),
               "options": ["rbind", "rw" if b.writable else "ro"]} for b in spec.binds),
        ]
        uid = spec.uid or 0
        config = {
            "ociVersion": "1.0.2",
            "process": {"terminal": False, "user": {"uid": uid, "gid": uid}, "args": spec.command,
                        "env": [f"{k}={v}" for k, v in spec.env.items()], "cwd": spec.cwd,
                        "rlimits": _oci_rlimits(spec.limits), "noNewPrivileges": True},
            "root": {"path": str(self._rootfs(spec)) if spec.minimal_root else "/", "readonly": True},
            "hostname": spec.hostname,
            "mounts": mounts,
            "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")
                                     if t != "network" or not spec.network]},
        }
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def _rootfs(self, spec: Spec) -> Path:
        """The skeleton a minimal root starts from: the exposed folders' mount points and links,
        and a mount point for everything the spec mounts."""
        rootfs = self._state / "rootfs"
        for name, link in exposed():
            if link is not None and not (rootfs / name).is_symlink():
                rootfs.mkdir(parents=True, exist_ok=True)
                (rootfs / name).symlink_to(link)
            elif link is None:
                (rootfs / name).mkdir(parents=True, exist_ok=True)
        for target in ["/proc", "/dev", *(t for t, _ in spec.tmpfs), *(b.target for b in spec.binds),
                       *(str(p) for p in self._hidden)]:
            (rootfs / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        return rootfs

    async def signal(self, container_id: str, pid: int, sig: signal.Signals) -> None:
        """Deliver ``sig`` to the job itself (runsc would die of it rather than forward it)."""
        if self.isolation is Isolation.GVISOR and sig is not signal.SIGKILL:
            await self._runsc("kill", container_id, sig.name.removeprefix("SIG"))
            return
        if self.isolation is Isolation.BUBBLEWRAP and sig is not signal.SIGKILL:
            # bwrap would die of it and take the job down (--die-with-parent) before its
            # handler ran: signal the job's processes, bwrap exits with the job's code.
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(pid).children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    async def cleanup(self, container_id: str) -> None:
        """Remove a container and its bundle (idempotent; nothing to do outside gVisor)."""
        if self.isolation is Isolation.GVISOR and container_id:
            # SIGKILL first: `delete --force` alone sends SIGTERM and waits 5 s before killing.
            await self._runsc("kill", "--all", container_id, "KILL")
            await self._runsc("delete", "--force", container_id)
            shutil.rmtree(self._state / "bundles" / container_id, ignore_errors=True)

    async def containers(self) -> list[str]:
        """The gVisor containers under this sandbox's state root (none for other isolations)."""
        if self.isolation is not Isolation.GVISOR:
            return []
        proc = await asyncio.create_subprocess_exec(
            "runsc", "--root", str(self._state), "list", "-quiet",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return out.decode().split()

    async def _runsc(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "runsc", "--root", str(self._state), *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()


EXPOSED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc")


def exposed() -> list[tuple[str, str | None]]:
    """The host's system folders a minimal root shows: (name, link target or None for a folder)."""
    found: list[tuple[str, str | None]] = []
    for name in EXPOSED:
        path = Path("/") / name
        if path.is_symlink():
            found.append((name, os.readlink(path)))
        elif path.is_dir():
            found.append((name, None))
    return found


def code_dirs(command: list[str]) -> list[Path]:
    """Folders of the script files the command names by absolute path."""
    return sorted({Path(arg).resolve().parent for arg in command
                   if arg.startswith("/") and Path(arg).is_file()})


def _limit_pairs(limits: Limits) -> list[tuple[str, int]]:
    pairs = [("RLIMIT_AS", limits.memory_bytes), ("RLIMIT_NOFILE", limits.max_open_files),
             ("RLIMIT_CORE", 0)]
    if limits.pids is not None:
        pairs.append(("RLIMIT_NPROC", limits.pids))
    if limits.cpu_seconds is not None:
        pairs.append(("RLIMIT_CPU", limits.cpu_seconds))
    if limits.file_bytes is not None:
        pairs.append(("RLIMIT_FSIZE", limits.file_bytes))
    return pairs


_WRAPPERS = bool(shutil.which("setpriv") and shutil.which("prlimit"))
_PRLIMIT = {"RLIMIT_AS": "--as", "RLIMIT_NOFILE": "--nofile", "RLIMIT_CORE": "--core",
            "RLIMIT_NPROC": "--nproc", "RLIMIT_CPU": "--cpu", "RLIMIT_FSIZE": "--fsize"}


def _wrapped(limits: Limits, uid: int | None) -> list[str]:
    """The same limits and uid as ``_rlimits``, applied by util-linux's prlimit and setpriv."""
    argv = ["prlimit", *(f"{_PRLIMIT[name]}={value}" for name, value in _limit_pairs(limits)), "--"]
    if uid is not None and os.geteuid() == 0:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]
    return argv


def _oci_rlimits(limits: Limits) -> list[dict[str, object]]:
    return [{"type": name, "hard": value, "soft": value} for name, value in _limit_pairs(limits)]


def _rlimits(limits: Limits, *, uid: int | None = None) -> Callable[[], None]:
    """Applied in the child before exec; ``uid`` (host root only) makes RLIMIT_NPROC count this
    sandbox's processes alone, and bubblewrap then runs unprivileged in its own user namespace."""
    pairs = [(getattr(resource, name), value) for name, value in _limit_pairs(limits)]

    def apply() -> None:
        for which, value in pairs:
            resource.setrlimit(which, (value, value))
        if uid is not None and os.geteuid() == 0:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return apply
