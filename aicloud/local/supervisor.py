"""Supervising the stack's processes: starting each in its own session, waiting until it is
ready, watching whether it lives, and stopping whole process groups so nothing is left."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil

from aicloud.local.state import Component

READY_TIMEOUT_S = 60.0
Probe = Callable[[], bool]


class StackError(RuntimeError):
    """A component failed; the message names it and quotes the tail of its log."""


def spawn(component: Component, *, cwd: Path) -> None:
    with open(component.log, "ab") as log:
        proc = subprocess.Popen(
            component.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **component.env}, user=component.user,
            start_new_session=True, cwd=cwd,
        )
    component.pid, component.started_at = proc.pid, time.time()


def wait_ready(component: Component, probe: Probe, timeout: float = READY_TIMEOUT_S) -> float:
    """Seconds until ``probe`` passed; raises StackError with the log tail otherwise."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if component.pid is None or not alive(component.pid):
            raise StackError(f"{component.name} exited during start-up\n{tail(component.log)}")
        if probe():
            return time.monotonic() - start
        time.sleep(0.05)
    raise StackError(f"{component.name} was not ready after {timeout:.0f} s\n{tail(component.log)}")


def wait_ready_together(group: list[Component], probe: Callable[[Component], Probe],
                        report: Callable[[str], None],
                        timeout: Callable[[Component], float] = lambda _: READY_TIMEOUT_S) -> None:
    """Wait for a group in parallel; report each in the group's order, raise the first failure."""
    with ThreadPoolExecutor(max_workers=len(group)) as pool:
        futures = {c.name: pool.submit(wait_ready, c, probe(c), timeout(c)) for c in group}
        for name, future in futures.items():
            report(f"{name} ready in {future.result():.1f}s")


def alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def terminate_groups(pids: list[int], grace_s: float) -> None:
    """SIGTERM each process group, wait up to ``grace_s`` for all of them, then SIGKILL."""
    groups = {g for g in (_pgid_of(pid) for pid in pids) if g is not None}
    members = [p for p in psutil.process_iter() if _pgid(p) in groups]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        _, members = psutil.wait_procs(members, timeout=grace_s)
        if not members:
            return


def settle(pid: int, timeout: float) -> bool:
    """After a component died on its own (SIGKILL, a crash): kill what is left of its process
    group (PostgreSQL's backends, a job's sandbox) and wait up to ``timeout`` for the dead
    process to be gone, zombie included (PID 1 may reap late). True when it is gone."""
    group = _pgid_of(pid)
    if group == pid:  # components lead their own group; anything else is not ours to kill
        left = [p for p in psutil.process_iter() if _pgid(p) == group and p.pid != pid]
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=timeout)
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not psutil.pid_exists(pid)


def reap(markers: list[str], runsc_roots: Iterable[Path]) -> None:
    """Kill every process with a marker in its command line and delete every gVisor container
    under the given state roots: what a service leaves behind when it is killed."""
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(marker in arg for arg in proc.info["cmdline"] or () for marker in markers):
                proc.kill()
    for state in runsc_roots:
        if not shutil.which("runsc") or not state.is_dir():
            continue
        listed = subprocess.run(["runsc", "--root", str(state), "list", "-quiet"], capture_output=True,
                                text=True, check=False)
        for container in listed.stdout.split():
            subprocess.run(["runsc", "--root", str(state), "delete", "--force", container],
                           capture_output=True, check=False)


def tail(path: str, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(f"  | {line}" for line in text[-lines:])


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None
