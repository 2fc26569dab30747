"""The local backend: each job a sandboxed process (gVisor, else bubblewrap, else rlimits) in
its own workspace and session; the isolation actually used is reported as ``local/<kind>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
from pathlib import Path

import psutil
import structlog

from contracts import DeviceSample, JobRequested, Placement
from contracts.catalog import dataset_project
from services.kit import gpu
from services.kit.sandbox import Limits, Sandbox, choose
from services.provisioner.backends import DatasetUnavailable, RunningJob
from services.provisioner.backends.runtime import job_path, job_runtime
from services.provisioner.cluster import ClusterView, local_view
from services.provisioner.jobs import tracking
from services.provisioner.jobs.gpus import job_devices

log = structlog.get_logger(__name__)
SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class LocalProcess:
    def __init__(self, proc: asyncio.subprocess.Process, *, sandbox: Sandbox, container_id: str) -> None:
        self._proc = proc
        self._sandbox = sandbox
        self._container_id = container_id

    async def gpu_samples(self) -> list[DeviceSample]:
        """The devices the job's processes hold memory on (NVML on this machine)."""
        def read() -> list[DeviceSample]:
            try:
                children = psutil.Process(self._proc.pid).children(recursive=True)
                tree = [self._proc.pid, *(p.pid for p in children)]
            except psutil.Error:
                return []
            return job_devices(gpu.sample(tree))

        return await asyncio.to_thread(read)

    async def placement(self) -> Placement:
        return Placement(host=os.uname().nodename, isolation=str(self._sandbox.isolation))

    async def wait(self) -> int | None:
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout=1.0)
        except TimeoutError:
            return None

    async def stop(self, *, grace_period_s: float) -> int:
        if self._proc.returncode is not None:
            return self._proc.returncode
        await self._sandbox.signal(self._container_id, self._proc.pid, signal.SIGTERM)
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout=grace_period_s)
        except TimeoutError:
            await self._sandbox.signal(self._container_id, self._proc.pid, signal.SIGKILL)
            return await self._proc.wait()


class LocalBackend:
    """Jobs as sandboxed processes on this machine, each in its own workspace and session."""

    def __init__(self, *, work_dir: Path, memory_limit_mb: int, dataset_root: Path | None = None,
                 artifact_root: Path | None = None, isolation: str = "auto",
                 hidden: list[Path] | None = None) -> None:
        self._work_dir = work_dir
        self._limits = Limits(memory_bytes=memory_limit_mb * 1024 * 1024)
        # what a node that runs the job builds its own sandbox from (the Ray backend)
        self._isolation_preference, self._state_dir = isolation, work_dir.parent / "sandbox"
        self._hidden = [work_dir, artifact_root or work_dir.parent / "artifacts", *(hidden or [])]
        self.dataset_root = dataset_root
        self.artifact_root = artifact_root or work_dir.parent / "artifacts"
        self.sandbox = Sandbox(choose(isolation), state_dir=self._state_dir, hidden=self._hidden)
        self.name = f"local/{self.sandbox.isolation}"

    async def cluster(self) -> ClusterView:
        return local_view()

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

    async def start(self, request: JobRequested, *, egress: bool = False, gpu_type: str | None = None,
                    grace_period_s: float = 10) -> RunningJob:
        workspace = await self.provision(request)
        await self._end_previous_attempt(workspace)
        # A fresh id per attempt: an orphan of a dead worker must never share state with it.
        container_id = f"{self.sandbox.container_id(request.tenant, request.job_id)}-{secrets.token_hex(3)}"
        dataset = self.dataset_dir(request)
        inside_workspace, inside_data = self.sandbox.paths(workspace, dataset)
        launch = self.sandbox.launch(
            container_id=container_id, command=request.command,
            env=job_env(request, workspace=inside_workspace, data=inside_data),
            workspace=workspace, dataset=dataset, limits=self._limits, network=egress,
            runtime=job_runtime(),
        )
        with (workspace / "job.log").open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv, cwd=workspace, env=job_env(request, workspace=str(workspace), data=None),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                start_new_session=True, preexec_fn=launch.preexec,
            )
        _record_attempt(workspace, proc.pid, container_id)
        log.info("job.process_started", job_id=request.job_id, pid=proc.pid,
                 isolation=self.sandbox.isolation)
        return LocalProcess(proc, sandbox=self.sandbox, container_id=container_id)

    async def teardown(self, request: JobRequested) -> None:
        # The workspace is kept: it holds the job's log, checkpoints and outputs.
        await self._end_previous_attempt(self.workspace(request))

    async def _end_previous_attempt(self, workspace: Path) -> None:
        """A worker that died left its job running: end it completely before going on."""
        try:
            record = json.loads((workspace / PID_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        await self.sandbox.cleanup(str(record.get("container_id", "")))
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError,
                                 KeyError, ValueError):
            proc = psutil.Process(int(record["pid"]))
            if abs(proc.create_time() - float(record["started"])) < 0.01:  # not a reused pid
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(psutil.wait_procs, [proc], 10)
                log.warning("job.previous_attempt_ended", workspace=str(workspace), pid=proc.pid)
        (workspace / PID_FILE).unlink(missing_ok=True)


def job_env(request: JobRequested, *, workspace: str, data: str | None) -> dict[str, str]:
    """The job's whole environment (nothing of the platform's leaks in), as the job sees paths."""
    return {
        "PATH": job_path(),
        "HOME": workspace,
        "AICLOUD_JOB_ID": request.job_id,
        "AICLOUD_TEAM": request.tenant,
        "AICLOUD_OUTPUT_DIR": f"{workspace}/output",
        "AICLOUD_CHECKPOINT_DIR": f"{workspace}/checkpoints",
        "AICLOUD_METRICS_FILE": f"{workspace}/metrics.jsonl",
        **({"AICLOUD_DATASET_DIR": data} if data else {}),
        **tracking.job_env(workspace),
        **{f"AICLOUD_PARAM_{k.upper()}": v for k, v in request.params.items()},
    }


PID_FILE = ".aicloud-attempt.json"


def _record_attempt(workspace: Path, pid: int, container_id: str) -> None:
    """Remember this attempt's process, so a retry after a worker crash can end it first."""
    with contextlib.suppress(psutil.NoSuchProcess):
        started = psutil.Process(pid).create_time()
        (workspace / PID_FILE).write_text(
            json.dumps({"pid": pid, "started": started, "container_id": container_id}))
