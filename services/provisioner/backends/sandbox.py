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
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import psutil
import structlog

log = structlog.get_logger(__name__)
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
        log.warning("sandbox.unavailable", detail="neither runsc nor bwrap found: jobs run as plain "
                    "rlimited processes without filesystem or network isolation")
    return options[0]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    preexec: Callable[[], None] | None


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    max_open_files: int = 4096


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
               dataset: Path | None, limits: Limits) -> Launch:
        if self.isolation is Isolation.GVISOR:
            bundle = self._write_bundle(container_id, command, env, workspace, dataset, limits)
            argv = ["runsc", "--root", str(self._state), "--network=none", "--ignore-cgroups",
                    "run", "--bundle", str(bundle), container_id]
            return Launch(argv, None)
        if self.isolation is Isolation.BUBBLEWRAP:
            argv = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                    "--tmpfs", "/tmp", *[a for p in self._hidden for a in ("--tmpfs", str(p))],
                    *[a for d in code_dirs(command) for a in ("--ro-bind", str(d), str(d))],
                    "--bind", str(workspace), WORKSPACE,
                    *(["--ro-bind", str(dataset), DATA] if dataset else []),
                    "--unshare-all", "--die-with-parent", "--chdir", WORKSPACE, "--clearenv",
                    *[arg for k, v in env.items() for arg in ("--setenv", k, v)], "--", *command]
            return Launch(argv, _rlimits(limits))
        return Launch(command, _rlimits(limits))

    def _write_bundle(self, container_id: str, command: list[str], env: dict[str, str],
                      workspace: Path, dataset: Path | None, limits: Limits) -> Path:
        bundle = self._state / "bundles" / container_id
        bundle.mkdir(parents=True, exist_ok=True)
        mounts = [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            *({"destination": str(p), "type": "tmpfs", "source": "tmpfs"} for p in self._hidden),
            *({"destination": str(d), "type": "bind", "source": str(d), "options": ["rbind", "ro"]}
              for d in code_dirs(command)),
            {"destination": WORKSPACE, "type": "bind", "source": str(workspace), "options": ["rbind", "rw"]},
        ]
        if dataset is not None:
            mounts.append({"destination": DATA, "type": "bind", "source": str(dataset),
                           "options": ["rbind", "ro"]})
        rlimits = [
            {"type": "RLIMIT_AS", "hard": limits.memory_bytes, "soft": limits.memory_bytes},
            {"type": "RLIMIT_NOFILE", "hard": limits.max_open_files, "soft": limits.max_open_files},
        ]
        config = {
            "ociVersion": "1.0.2",
            "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": command,
                        "env": [f"{k}={v}" for k, v in env.items()], "cwd": WORKSPACE,
                        "rlimits": rlimits, "noNewPrivileges": True},
            "root": {"path": "/", "readonly": True},
            "hostname": "job",
            "mounts": mounts,
            "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
        }
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

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
            await self._runsc("delete", "--force", container_id)
            shutil.rmtree(self._state / "bundles" / container_id, ignore_errors=True)

    async def _runsc(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "runsc", "--root", str(self._state), *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        await proc.wait()


def code_dirs(command: list[str]) -> list[Path]:
    """Folders of the script files the command names by absolute path."""
    return sorted({Path(arg).resolve().parent for arg in command
                   if arg.startswith("/") and Path(arg).is_file()})


def _rlimits(limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply
