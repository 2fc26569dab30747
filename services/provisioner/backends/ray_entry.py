"""A Ray job's entrypoint, run by Ray on the node it placed the job on: the job in the same
sandbox the local backend uses (the node's strongest: gVisor, bubblewrap, else a plain
rlimited process, said in the job's log), with the GPUs Ray assigned and nothing else.

    python -m services.provisioner.backends.ray_entry      (the spec in AICLOUD_RAY_ENTRY)

Stopping: the provisioner writes ``.aicloud-stop-<submission id>`` into the job's workspace (a
folder every node sees); an attempt that finds it before it starts never runs (Ray may place a
job it was told to stop while it waited for GPUs), and a running one is stopped as the local
backend does — SIGTERM through the sandbox (``runsc kill`` for gVisor, whose processes are not
host processes), the grace period, then SIGKILL — and exits with the job's code. Ray's own
``stop_job`` (the fallback) signals the entrypoint's whole process tree at once, which would
take the sandbox down before the job's handler ran: bubblewrap is started with SIGTERM ignored
(``env --default-signal`` gives the job its default back), and this process forwards the
SIGTERM itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, NotRequired, TypedDict

# Lean on purpose: this runs once per job on a node, beside Ray's own per-job worker, and every
# module it imports costs each job CPU (pydantic, the contracts and structlog cost ~0.25 s).
from services.kit.sandbox.layer import Isolation, Limits, Sandbox, choose
from services.provisioner.backends.runtime import job_path, job_runtime

SAMPLE_EVERY_S = 10.0  # as services.provisioner.jobs.gpus (not imported here: the entry starts lean)

PLACEMENT = ".aicloud-placement.json"
STOPPED_BEFORE_START = 3
SPEC_VERSION = 2


def stop_file(workspace: Path, submission_id: str) -> Path:
    return workspace / f".aicloud-stop-{submission_id}"


class EntrySpec(TypedDict):
    """What the provisioner hands the entrypoint (JSON in ``AICLOUD_RAY_ENTRY``): the job's
    command and environment already built, both ways the job may see its paths (``sandboxed``:
    /workspace and /data; ``plain``: the host's folders); PATH is the node's own."""

    version: int
    job_id: str
    command: list[str]
    gpus: int
    env: dict[str, dict[str, str]]
    submission_id: str
    container_id: str
    workspace: str
    dataset: str | None
    memory_limit_mb: int
    egress: bool
    isolation: str
    grace_period_s: float
    state_dir: str
    hidden: NotRequired[list[str]]


def read_spec(text: str) -> EntrySpec:
    """The spec; one from a provisioner before SPEC_VERSION 2 (a job Ray still held when the
    platform was upgraded) is converted, at the old entrypoint's import cost."""
    raw: dict[str, Any] = json.loads(text)
    if raw.get("version") == SPEC_VERSION:
        return raw  # type: ignore[return-value]
    from contracts import JobRequested
    from services.provisioner.backends.ray import entry_spec

    dataset = raw.get("dataset")
    return entry_spec(
        JobRequested.model_validate(raw["request"]), submission_id=raw["submission_id"],
        container_id=raw["container_id"], workspace=Path(raw["workspace"]),
        dataset=Path(dataset) if dataset else None, memory_limit_mb=raw["memory_limit_mb"],
        egress=raw.get("egress", False), isolation=raw.get("isolation", "auto"),
        grace_period_s=raw.get("grace_period_s", 10), state_dir=raw["state_dir"],
        hidden=raw.get("hidden", []))


async def run(spec: EntrySpec) -> int:
    workspace = Path(spec["workspace"])
    dataset = Path(spec["dataset"]) if spec["dataset"] else None
    stop = stop_file(workspace, spec["submission_id"])
    if stop.exists():
        with (workspace / "job.log").open("ab") as stopped_log:
            stopped_log.write(f"[aicloud] attempt {spec['submission_id']} was stopped before it "
                              "started\n".encode())
        return STOPPED_BEFORE_START
    sandbox = Sandbox(choose(spec["isolation"]), state_dir=Path(spec["state_dir"]),
                      hidden=[Path(h) for h in spec.get("hidden", [])])
    wrapped = sandbox.isolation is not Isolation.RLIMITS
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    node = {"PATH": job_path(), **({"CUDA_VISIBLE_DEVICES": gpus} if spec["gpus"] else {})}
    env = {**spec["env"]["sandboxed" if wrapped else "plain"], **node}
    command = ["env", "--default-signal=TERM", *spec["command"]] if wrapped else spec["command"]
    launch = sandbox.launch(container_id=spec["container_id"], command=command, env=env,
                            workspace=workspace, dataset=dataset,
                            limits=Limits(memory_bytes=spec["memory_limit_mb"] * 1024 * 1024),
                            network=spec["egress"], runtime=job_runtime())
    (workspace / PLACEMENT).write_text(json.dumps(
        {"submission_id": spec["submission_id"],
         "gpu_ids": [g for g in gpus.split(",") if g] if spec["gpus"] else [],
         "host": os.uname().nodename, "isolation": str(sandbox.isolation)}))

    def preexec() -> None:
        if wrapped:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if launch.preexec is not None:
            launch.preexec()

    # what starts the sandbox sees the host's paths; a plain process is the job itself
    outer = env if not wrapped else {k: v for k, v in {**spec["env"]["plain"], **node}.items()
                                     if k != "AICLOUD_DATASET_DIR"}
    with (workspace / "job.log").open("ab") as log_file:
        if not wrapped:
            log_file.write(b"[aicloud] no sandbox on this node (neither runsc nor bwrap): the job "
                           b"runs as a plain rlimited process\n")
            log_file.flush()
        proc = await asyncio.create_subprocess_exec(
            *launch.argv, cwd=workspace, env=outer,
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file, preexec_fn=preexec)
    stopping: list[bool] = []
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.append, True)
    sampled_at = 0.0
    try:
        while True:
            try:
                return await asyncio.wait_for(proc.wait(), timeout=0.2)
            except TimeoutError:
                if stopping or stop.exists():
                    return await _stop(sandbox, spec, proc)
            if spec["gpus"] and time.monotonic() - sampled_at > SAMPLE_EVERY_S:
                sampled_at = time.monotonic()
                await asyncio.to_thread(_sample_gpus, workspace, gpus)
    finally:
        await sandbox.cleanup(spec["container_id"])


def _sample_gpus(workspace: Path, visible: str) -> None:
    """The devices Ray gave the job, read here on its node, for the provisioner to publish."""
    from services.kit import gpu
    from services.provisioner.jobs.gpus import job_devices, write_devices

    try:
        write_devices(workspace, job_devices(gpu.sample(), visible=visible))
    except Exception as exc:  # a GPU reading never stops a job
        print(f"[aicloud] GPU sample failed: {exc}", file=sys.stderr, flush=True)


async def _stop(sandbox: Sandbox, spec: EntrySpec, proc: asyncio.subprocess.Process) -> int:
    """SIGTERM through the sandbox, the grace period, then SIGKILL: the local backend's stop."""
    await sandbox.signal(spec["container_id"], proc.pid, signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), timeout=spec["grace_period_s"])
    except TimeoutError:
        await sandbox.signal(spec["container_id"], proc.pid, signal.SIGKILL)
        return await proc.wait()


def main() -> None:
    spec = read_spec(os.environ["AICLOUD_RAY_ENTRY"])
    code = asyncio.run(run(spec))
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()
