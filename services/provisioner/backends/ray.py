"""The Ray backend: each job a Ray job (the Jobs API) on a node of a Ray cluster that has its
GPUs, run there in the platform's sandbox by ``ray_entry``.

Storage is the local backend's: workspaces, datasets and artifacts under folders every node
sees (locally a folder under $AICLOUD_HOME; in production a shared volume), so outputs,
metrics, tracking and model registration work unchanged.

Submission ids are the job id (``<job>--a<n>`` for the n-th attempt after a node was lost), so
a retried activity finds the attempt it started instead of starting the job twice.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog

from contracts import DeviceSample, JobRequested, Placement
from services.kit.sandbox import DATA, WORKSPACE
from services.provisioner.backends import JobUnplaceable, NodeLost
from services.provisioner.backends.local import LocalBackend, job_env
from services.provisioner.backends.ray_entry import PLACEMENT, SPEC_VERSION, EntrySpec, stop_file
from services.provisioner.cluster import ClusterView, list_ray_jobs, ray_view, status_of
from services.provisioner.jobs.gpus import read_devices

log = structlog.get_logger(__name__)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
LOST = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE"}
UNPLACEABLE = {"JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE", "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"}
MAX_ATTEMPTS = 20
ENTRY_MODULE = "services.provisioner.backends.ray_entry"


class JobsApi(Protocol):
    """The part of Ray's ``JobSubmissionClient`` the backend uses (blocking HTTP)."""

    def submit_job(self, **kwargs: Any) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def stop_job(self, job_id: str) -> bool: ...
    def list_jobs(self) -> list[Any]: ...


def ray_jobs_client(address: str) -> JobsApi:
    """Ray's client for the Jobs API (imported here: Ray is heavy and only this engine needs it)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)  # type: ignore[return-value]


def entry_spec(request: JobRequested, *, submission_id: str, container_id: str, workspace: Path,
               dataset: Path | None, memory_limit_mb: int, egress: bool, isolation: str,
               grace_period_s: float, state_dir: str, hidden: list[str] | None = None) -> EntrySpec:
    """What ``ray_entry`` needs, built here so that it imports nothing heavy on the node: the
    job's environment both ways it may see its paths (in a sandbox: /workspace and /data)."""
    envs = {"sandboxed": job_env(request, workspace=WORKSPACE, data=DATA if dataset else None),
            "plain": job_env(request, workspace=str(workspace), data=str(dataset) if dataset else None)}
    return EntrySpec(version=SPEC_VERSION, job_id=request.job_id, command=request.command, gpus=request.gpus,
                     env={k: {n: v for n, v in env.items() if n != "PATH"} for k, env in envs.items()},
                     submission_id=submission_id, container_id=container_id, workspace=str(workspace),
                     dataset=str(dataset) if dataset else None, memory_limit_mb=memory_limit_mb,
                     egress=egress, isolation=isolation, grace_period_s=grace_period_s,
                     state_dir=state_dir, hidden=hidden or [])


def _missing(exc: RuntimeError) -> bool:
    """The Jobs API answers 404 (no such job) as a RuntimeError."""
    return "does not exist" in str(exc) or "404" in str(exc)


def gpu_resource(gpu_type: str) -> str:
    """The custom resource a node offering this GPU type declares (Ray's own convention)."""
    return f"accelerator_type:{gpu_type}"


def attempt_id(job_id: str, attempt: int) -> str:
    return job_id if attempt == 1 else f"{job_id}--a{attempt}"


class JobStates:
    """Every Ray job's state from one ``list_jobs`` call, shared by all the jobs being watched
    and read again at most every ``max_age_s``: a few hundred running jobs cost the cluster's
    dashboard one request per poll instead of one each (and no thread of this process each).
    A job not in the list (submitted after it was read) is asked for on its own.

    The list holds every job the cluster remembers, finished ones too, so a read grows with the
    cluster's history: after a few hundred jobs one took the dashboard ~0.1 s of CPU, and reading
    it every 0.4 s kept a quarter of a core busy. A read is therefore repeated no sooner than
    ``1 / busy_share`` times as long as the last one took (at most ``max_age_cap_s``): the
    dashboard and this process spend at most that share of their time listing."""

    def __init__(self, api: JobsApi, *, max_age_s: float = 0.4, busy_share: float = 0.1,
                 max_age_cap_s: float = 5.0) -> None:
        self._api, self._max_age_s = api, max_age_s
        self._busy_share, self._max_age_cap_s = busy_share, max(max_age_cap_s, max_age_s)
        self._jobs: dict[str, Any] = {}
        self._read_at = -1e9
        self._took = 0.0
        self._lock = asyncio.Lock()

    @property
    def max_age_s(self) -> float:
        """How old the states may be before they are read again."""
        return min(max(self._max_age_s, self._took / self._busy_share), self._max_age_cap_s)

    async def refresh(self) -> None:
        """Read the jobs again unless that was done less than ``max_age_s`` ago; raises what
        the client raises when the cluster does not answer."""
        async with self._lock:  # one read in flight; the others wait for it
            if time.monotonic() - self._read_at > self.max_age_s:
                began = time.monotonic()
                jobs = await asyncio.to_thread(self._api.list_jobs)
                self._jobs = {job.submission_id: job for job in jobs if job.submission_id}
                self._read_at = time.monotonic()
                self._took = self._read_at - began

    async def get(self, submission_id: str) -> Any:
        await self.refresh()
        found = self._jobs.get(submission_id)
        if found is not None:
            return found
        return await asyncio.to_thread(self._api.get_job_info, submission_id)


class RayJob:
    def __init__(self, api: JobsApi, submission_id: str, request: JobRequested, *, workspace: Path,
                 gpu_type: str | None, placement_timeout_s: float,
                 states: JobStates | None = None) -> None:
        self._api, self.submission_id, self._request = api, submission_id, request
        self._workspace = workspace
        self._gpu_type = gpu_type
        self._placement_deadline = time.monotonic() + placement_timeout_s
        self._states = states

    async def info(self) -> Any:
        """The job as Ray knows it; a job the cluster no longer has (deleted, or its head restarted
        and forgot it) is a lost node to the platform: the job runs again from its checkpoint."""
        try:
            if self._states is not None:
                return await self._states.get(self.submission_id)
            return await asyncio.to_thread(self._api.get_job_info, self.submission_id)
        except RuntimeError as exc:
            if not _missing(exc):
                raise
            stop_file(self._workspace, self.submission_id).touch()  # should it still run somewhere
            raise NodeLost(f"Ray job {self.submission_id} no longer exists on the cluster (deleted, "
                           "or its head restarted)") from None

    async def abandon(self) -> None:
        """Give up on an attempt still waiting for a node: Ray is told to stop it, and should it
        be placed anyway (a stop may not reach a job that was never scheduled), its entrypoint
        finds the stop file and does not run the job."""
        stop_file(self._workspace, self.submission_id).touch()
        await asyncio.to_thread(self._api.stop_job, self.submission_id)

    async def until_placed(self) -> None:
        """Wait while the job waits for a node (its GPUs), up to the placement timeout. A job
        without GPUs waits for nothing but Ray starting it (a burst of hundreds takes Ray
        minutes on a small head): it is not given up on here; Ray's own start timeout
        (``RAY_JOB_START_TIMEOUT_SECONDS``, 15 min) fails it, as unplaceable, if it never starts."""
        while (status := status_of(await self.info())) == "PENDING":
            if self._request.gpus and time.monotonic() > self._placement_deadline:
                await self.abandon()
                raise JobUnplaceable(self._unplaceable())
            await asyncio.sleep(0.2)
        log.info("ray.job_placed", submission_id=self.submission_id, status=status)

    async def placement(self, wait_s: float = 30.0) -> Placement:
        """The node Ray placed it on, and what its entrypoint recorded there once it started the
        job: the GPU ids Ray gave it and its sandbox (waited for up to ``wait_s``)."""
        info = await self.info()
        recorded = self._workspace / PLACEMENT
        deadline, asked = time.monotonic() + wait_s, time.monotonic()
        while True:
            try:
                found = json.loads(recorded.read_text())
                if found.get("submission_id", self.submission_id) == self.submission_id:
                    return Placement(node_id=info.driver_node_id, host=found.get("host"),
                                     gpu_ids=[str(g) for g in found.get("gpu_ids", [])],
                                     isolation=found.get("isolation"))
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline or status_of(info) != "RUNNING":
                break  # one that ended before recording anything: stop waiting
            await asyncio.sleep(0.1)
            if time.monotonic() - asked > 1.0:
                info, asked = await self.info(), time.monotonic()
        return Placement(node_id=info.driver_node_id)

    async def gpu_samples(self) -> list[DeviceSample]:
        """What the job's entrypoint last read on its node (real devices only)."""
        return await asyncio.to_thread(read_devices, self._workspace)

    async def wait(self) -> int | None:
        info = await self.info()
        status = status_of(info)
        if status not in TERMINAL:
            await asyncio.sleep(0.5)
            return None
        return self._exit_code(info, status)

    def _exit_code(self, info: Any, status: str) -> int:
        error = str(getattr(info.error_type, "value", info.error_type or ""))
        if status == "SUCCEEDED":
            return 0
        if error in LOST:
            # should the node be cut off rather than dead, its entrypoint stops the job when it
            # sees this, so two attempts never write the same checkpoints
            stop_file(self._workspace, self.submission_id).touch()
            raise NodeLost(f"Ray job {self.submission_id}: its node was lost ({info.message})")
        if error in UNPLACEABLE:
            raise JobUnplaceable(self._unplaceable())
        if info.driver_exit_code is not None:
            return int(info.driver_exit_code)
        return -15 if status == "STOPPED" else 1

    def _unplaceable(self) -> str:
        wanted = f"{self._request.gpus} free {self._gpu_type or 'GPU'}" if self._request.gpus else "room"
        return f"no node with {wanted} took the job in time"

    async def stop(self, *, grace_period_s: float) -> int:
        """SIGTERM, the grace period, then kill — done on the node by the job's entrypoint when
        it sees the stop file; Ray's own stop (everything at once) only if that did not end it."""
        stop_file(self._workspace, self.submission_id).touch()
        deadline = time.monotonic() + grace_period_s + 10
        while time.monotonic() < deadline:
            try:
                info = await self.info()
            except NodeLost:  # nothing left to stop
                return -15
            if status_of(info) in TERMINAL:
                return int(info.driver_exit_code) if info.driver_exit_code is not None else -15
            await asyncio.sleep(0.2)
        log.warning("ray.stop_forced", submission_id=self.submission_id)
        await asyncio.to_thread(self._api.stop_job, self.submission_id)
        return -9


class RayBackend(LocalBackend):
    """Jobs on a Ray cluster; the workspace layout and storage are the local backend's."""

    def __init__(self, *, api: Callable[[], JobsApi], address: str = "",
                 placement_timeout_s: float = 300.0, python: str = sys.executable, **storage: Any) -> None:
        super().__init__(**storage)
        self.address = address
        self._api_factory, self._api_client = api, None
        self._python = python  # the nodes' Python with the platform installed (same image)
        self.placement_timeout_s = placement_timeout_s
        self.name = "ray"
        self._states: JobStates | None = None
        self._states_api: JobsApi | None = None

    @property
    def api(self) -> JobsApi:
        if self._api_client is None:  # the client asks the cluster for its version when built
            self._api_client = self._api_factory()  # type: ignore[assignment]
        return self._api_client  # type: ignore[return-value]

    async def start(self, request: JobRequested, *, egress: bool = False, gpu_type: str | None = None,
                    grace_period_s: float = 10) -> RayJob:
        workspace = await self.provision(request)
        api = await self._reachable(time.monotonic() + self.placement_timeout_s)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            submission_id = attempt_id(request.job_id, attempt)
            info = await self._find(api, submission_id)
            if info is None:
                await self._submit(api, submission_id, request, workspace, egress=egress, gpu_type=gpu_type,
                                   grace_period_s=grace_period_s)
                break
            status = status_of(info)
            if status not in TERMINAL:  # a retried activity: the attempt it started still runs
                log.info("ray.job_reattached", job_id=request.job_id, submission_id=submission_id)
                break
        else:
            raise RuntimeError(f"job {request.job_id}: {MAX_ATTEMPTS} attempts on Ray already")
        job = RayJob(api, submission_id, request, workspace=workspace, gpu_type=gpu_type,
                     placement_timeout_s=self.placement_timeout_s, states=self._states_of(api))
        await job.until_placed()  # the job's status says running once its process runs
        return job

    def _states_of(self, api: JobsApi) -> JobStates:
        if self._states is None or self._states_api is not api:  # a new client after an outage
            self._states, self._states_api = JobStates(api), api
        return self._states

    async def _reachable(self, deadline: float) -> JobsApi:
        """The Jobs API; while the cluster does not answer the job waits (its activity heartbeats),
        up to the placement timeout."""
        while True:
            try:
                api = await asyncio.to_thread(lambda: self.api)
                await self._states_of(api).refresh()  # shared by every job starting now
                return api
            except (OSError, RuntimeError, ValueError) as exc:  # requests' errors are OSErrors
                self._api_client = None
                if time.monotonic() > deadline:
                    raise JobUnplaceable(f"the Ray cluster at {self.address} did not answer for "
                                         f"{self.placement_timeout_s:.0f} s: {exc}") from None
                log.warning("ray.unreachable", address=self.address, error=str(exc))
                await asyncio.sleep(2)

    async def _find(self, api: JobsApi, submission_id: str) -> Any | None:
        try:
            return await asyncio.to_thread(api.get_job_info, submission_id)
        except RuntimeError as exc:
            if _missing(exc):
                return None
            raise

    async def _submit(self, api: JobsApi, submission_id: str, request: JobRequested, workspace: Path, *,
                      egress: bool, gpu_type: str | None, grace_period_s: float) -> None:
        dataset = self.dataset_dir(request)
        container = self.sandbox.container_id(request.tenant, request.job_id)
        spec = entry_spec(request, submission_id=submission_id, workspace=workspace, dataset=dataset,
                          container_id=f"{container}-{secrets.token_hex(3)}",
                          memory_limit_mb=self._limits.memory_bytes // (1024 * 1024), egress=egress,
                          isolation=self._isolation_preference, state_dir=str(self._state_dir),
                          grace_period_s=grace_period_s, hidden=[str(h) for h in self._hidden])
        resources = {gpu_resource(gpu_type): 0.001} if gpu_type and request.gpus else None
        await asyncio.to_thread(
            api.submit_job, entrypoint=f"{shlex.quote(self._python)} -m {ENTRY_MODULE}",
            submission_id=submission_id, entrypoint_num_gpus=request.gpus, entrypoint_num_cpus=0,
            entrypoint_resources=resources,
            runtime_env={"env_vars": {"AICLOUD_RAY_ENTRY": json.dumps(spec),
                                      "RAY_JOB_STOP_WAIT_TIME_S": str(max(int(grace_period_s), 1))}},
            metadata={"aicloud.team": request.tenant, "aicloud.job_id": request.job_id})
        log.info("ray.job_submitted", job_id=request.job_id, submission_id=submission_id,
                 gpus=request.gpus, gpu_type=gpu_type)

    async def cluster(self) -> ClusterView:
        api = await asyncio.to_thread(lambda: self.api)
        return await ray_view(self.address, await list_ray_jobs(api))

    async def nodes(self) -> ClusterView:
        """The cluster's nodes and their GPUs, without what is in use (one request)."""
        return await ray_view(self.address)

    async def check(self) -> None:
        """Readiness: the cluster's Jobs API answers (jobs wait queued in Temporal meanwhile)."""
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                (await client.get(f"{self.address}/api/version")).raise_for_status()
        except httpx.HTTPError as exc:
            raise RuntimeError(f"Ray cluster at {self.address} unreachable: {exc}") from None

    async def teardown(self, request: JobRequested) -> None:
        """Stop every attempt of the job that still runs or waits for a node (an orphan of a
        lost worker, or a start that was cancelled): the stop file first, so one placed later
        does not run."""
        api = await asyncio.to_thread(lambda: self.api)
        workspace = self.workspace(request)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            submission_id = attempt_id(request.job_id, attempt)
            info = await self._find(api, submission_id)
            if info is None:
                return
            if status_of(info) not in TERMINAL:
                stop_file(workspace, submission_id).touch()
                await asyncio.to_thread(api.stop_job, submission_id)
