"""The local backend: the job's command as a process in its own workspace and session, with
resource limits. Sandboxing (gVisor, bubblewrap) plugs in here; until then the backend
reports its isolation honestly as ``rlimits``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
from pathlib import Path

import structlog

from contracts import JobRequested
from contracts.catalog import dataset_project
from services.provisioner.backends import DatasetUnavailable

log = structlog.get_logger(__name__)
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class LocalProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    async def wait(self) -> int | None:
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout=1.0)
        except TimeoutError:
            return None

    async def stop(self, *, grace_period_s: float) -> int:
        if self._proc.returncode is not None:
            return self._proc.returncode
        _signal_group(self._proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout=grace_period_s)
        except TimeoutError:
            _signal_group(self._proc.pid, signal.SIGKILL)
            return await self._proc.wait()


class LocalBackend:
    name = "local"
    isolation = "rlimits"

    def __init__(self, *, work_dir: Path, memory_limit_mb: int, dataset_root: Path | None = None,
                 artifact_root: Path | None = None) -> None:
        self._work_dir = work_dir
        self._memory_bytes = memory_limit_mb * 1024 * 1024
        self.dataset_root = dataset_root
        self.artifact_root = artifact_root or work_dir.parent / "artifacts"

    def dataset_dir(self, request: JobRequested) -> Path | None:
        """Where the job's dataset lives locally; None when it has none."""
        if request.dataset is None:
            return None
        if self.dataset_root is None or dataset_project(request.dataset) is None:
            raise DatasetUnavailable(f"dataset {request.dataset!r} is not available on this backend")
        path = (self.dataset_root / request.dataset).resolve()
        if not path.is_dir() or not path.is_relative_to(self.dataset_root.resolve()):
            raise DatasetUnavailable(f"dataset {request.dataset!r} does not exist")
        return path

    def workspace(self, request: JobRequested) -> Path:
        return self.workspace_for(team=request.tenant, job_id=request.job_id)

    def workspace_for(self, *, team: str, job_id: str) -> Path:
        if not (SAFE_NAME.match(team) and SAFE_NAME.match(job_id)):
            raise ValueError(f"not a valid team/job name: {team!r}/{job_id!r}")
        return self._work_dir / team / job_id

    async def provision(self, request: JobRequested) -> Path:
        self.dataset_dir(request)  # fail before anything runs when the dataset is missing
        workspace = self.workspace(request)
        for sub in ("output", "checkpoints"):
            (workspace / sub).mkdir(parents=True, exist_ok=True)
        return workspace

    async def start(self, request: JobRequested) -> LocalProcess:
        workspace = await self.provision(request)
        log_file = (workspace / "job.log").open("ab")
        memory = self._memory_bytes

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        dataset = self.dataset_dir(request)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workspace),
            "AICLOUD_JOB_ID": request.job_id,
            "AICLOUD_TEAM": request.tenant,
            "AICLOUD_OUTPUT_DIR": str(workspace / "output"),
            "AICLOUD_CHECKPOINT_DIR": str(workspace / "checkpoints"),
            "AICLOUD_METRICS_FILE": str(workspace / "metrics.jsonl"),
            **({"AICLOUD_DATASET_DIR": str(dataset)} if dataset else {}),
            **{f"AICLOUD_PARAM_{k.upper()}": v for k, v in request.params.items()},
        }
        proc = await asyncio.create_subprocess_exec(
            *request.command, cwd=workspace, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file, stderr=log_file, start_new_session=True, preexec_fn=limits,
        )
        log_file.close()
        log.info("job.process_started", job_id=request.job_id, pid=proc.pid, isolation=self.isolation)
        return LocalProcess(proc)

    async def teardown(self, request: JobRequested) -> None:
        # Workspaces are kept: they hold the job's log and artifacts.
        return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
