"""A real Ray cluster on this machine: a head and worker nodes (``ray start`` from the
``ray[default]`` wheel), each with its own ports, declaring logical GPUs of a type.

Each node is ``ray start --block`` in a session of its own, so stopping ends every process of
it (raylet, agents, workers) and never another Ray on the machine, which ``ray stop`` would.
Without distinct agent ports the nodes come up but job logs fail (the agent's port reads -1).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from aicloud.local.servers import free_block, free_port

START_TIMEOUT_S = 90.0
# The nodes' agents, managers and workers: above the ephemeral range (32768-60999 here), away
# from the stack's 20000-31999 and from Ray's own default worker range (10002-19999).
RAY_PORTS = range(61_000, 65_000)
WORKER_PORTS = 51
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                 "health_check_failure_threshold": 3}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int = 0
    gpu_type: str | None = None
    cpus: int = 2


LOCAL_NODES = (NodeSpec("h100-node", gpus=8, gpu_type="h100-80gb"),
               NodeSpec("a100-node", gpus=4, gpu_type="a100-80gb"))
"""The local cluster's workers: simulated GPUs of two types (nothing runs on a real GPU)."""


class RayStartError(RuntimeError):
    pass


@dataclass
class RayCluster:
    """Started with ``start()``; ``dashboard`` is the Jobs API address the provisioner uses."""

    root: Path
    nodes: tuple[NodeSpec, ...] = LOCAL_NODES
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)  # nodes killed on purpose: not a start failure

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def temp_dir(self) -> Path:
        # Ray's Unix sockets live under it: a socket path has at most 107 bytes
        return Path("/tmp") / f"aicloud-ray-{self.gcs_port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._spawn("head", ["--head", f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                             "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=1",
                             "--num-gpus=0", f"--temp-dir={self.temp_dir}",
                             # a lost node is noticed in ~3 s (Ray's default: ~30 s)
                             f"--system-config={json.dumps(HEALTH_CHECKS)}"])
        self._wait(lambda: _get(f"{self.dashboard}/api/version") is not None, "head")
        for count, node in enumerate(self.nodes, start=2):  # one at a time: two at once can time out
            self._spawn_worker(node)
            self._wait(lambda count=count: len(self.alive_nodes()) >= count, node.name)

    def _spawn_worker(self, node: NodeSpec) -> None:
        resources = {f"accelerator_type:{node.gpu_type}": 1} if node.gpu_type else {}
        self._spawn(node.name, [f"--address=127.0.0.1:{self.gcs_port}", f"--num-cpus={node.cpus}",
                                f"--num-gpus={node.gpus}", f"--resources={json.dumps(resources)}"])

    def alive_nodes(self) -> list[dict[str, object]]:
        return alive_nodes(self.dashboard)

    def add_node(self, node: NodeSpec) -> str:
        """One more worker node (a machine joining the cluster), waited for until it is alive;
        returns its node id. Works on a cluster this object did not start too (given its
        ports): only what it started is stopped by ``stop``."""
        known = {n.get("nodeId") for n in self.alive_nodes()}
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = (*self.nodes, node)
        self._spawn_worker(node)
        self._wait(lambda: any(n.get("nodeId") not in known for n in self.alive_nodes()), node.name)
        return next(str(n["nodeId"]) for n in self.alive_nodes() if n.get("nodeId") not in known)

    def kill_node(self, name: str) -> None:
        """A node lost at once (a crashed machine): SIGKILL every process of it, the sandboxes
        its jobs run in too (gVisor's sandbox and gofer leave the node's session)."""
        crash(self.procs[name].pid)
        self.lost.add(name)


    def stop(self, grace_s: float = 5.0) -> None:
        for name in [*reversed([n.name for n in self.nodes]), "head"]:
            proc = self.procs.get(name)
            if proc is not None:
                _kill_session(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_session(p.pid) for p in self.procs.values()):
            time.sleep(0.2)
        for proc in self.procs.values():
            _kill_session(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if "head" in self.procs:  # the cluster's own folder, when this object started it
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def restart_node(self, name: str) -> None:
        """Start a worker node again (after ``kill_node``) and wait until it is alive."""
        node = next(n for n in self.nodes if n.name == name)
        self.procs[name].wait(10)
        self.lost.discard(name)
        known = {n.get("nodeId") for n in self.alive_nodes()}  # the dead one may still be listed
        self._spawn_worker(node)
        self._wait(lambda: any(n.get("nodeId") not in known for n in self.alive_nodes()), name)

    def _spawn(self, name: str, args: list[str]) -> None:
        # the nodes' own ports from a band of their own: the stack picks its ports in another
        # process, from 20000-31999, and cannot know which of those a node took
        port = partial(free_port, band=RAY_PORTS)
        ports = [f"--dashboard-agent-listen-port={port()}", f"--dashboard-agent-grpc-port={port()}",
                 f"--metrics-export-port={port()}", f"--runtime-env-agent-port={port()}",
                 f"--node-manager-port={port()}", f"--object-manager-port={port()}"]
        low = free_block(WORKER_PORTS, band=RAY_PORTS)  # the head's too: Ray's default clashes
        workers = [f"--min-worker-port={low}", f"--max-worker-port={low + WORKER_PORTS - 1}"]
        ray = Path(sys.executable).with_name("ray")
        argv = [str(ray), "start", *args, *ports, *workers, "--node-ip-address=127.0.0.1",
                "--disable-usage-stats", "--block"]
        log = (self.root / f"ray-{name}.log").open("wb")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def _wait(self, ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if callable(ready) and ready():
                return
            for name, proc in self.procs.items():
                if name not in self.lost and proc.poll() is not None:
                    raise RayStartError(f"Ray {name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.3)
        raise RayStartError(f"Ray {what} not up within {START_TIMEOUT_S:.0f} s:\n"
                            + "\n".join(self.log_tail(n) for n in self.procs))

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / f"ray-{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- ray {name} ({path}) ---\n" + "\n".join(text.splitlines()[-lines:])


def alive_nodes(dashboard: str) -> list[dict[str, object]]:
    """The dashboard's view of each live node: id and total resources."""
    answer = _get(f"{dashboard}/nodes?view=summary")
    if answer is None:
        return []
    return [n["raylet"] for n in answer["data"]["summary"] if n["raylet"].get("state") == "ALIVE"]


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError):
        return None


def _session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _kill_session(sid: int, sig: signal.Signals) -> None:
    for proc in _session(sid):
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue


def node_session(gcs_address: str, gpu_type: str, *, besides: RayCluster | None = None) -> int:
    """The session of a worker node joined to the cluster at ``gcs_address`` that offers
    ``gpu_type`` and was not started by ``besides`` (a cluster another process runs, such as
    the stack's); ``crash`` takes it down. LookupError when there is none."""
    mine = {p.pid for p in besides.procs.values()} if besides is not None else set()
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if (f"--address={gcs_address}" in line and f"accelerator_type:{gpu_type}" in line
                and " start " in f" {line} " and proc.pid not in mine):
            return os.getsid(proc.pid)
    raise LookupError(f"no {gpu_type} node of the cluster at {gcs_address} is running")


def crash(sid: int) -> None:
    """SIGKILL a node's session and every process descended from it, as a machine crash would."""
    doomed = _session(sid)
    for proc in list(doomed):
        try:
            doomed.extend(proc.children(recursive=True))
        except psutil.Error:
            continue
    for proc in doomed:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue


def serve(argv: list[str] | None = None) -> None:
    """``python -m aicloud.local.ray_cluster``: the local stack's Ray cluster as one supervised
    process. It starts the head and the worker nodes, then waits; SIGTERM or SIGINT stops every
    node (the stack's ``dev down``). A worker node that dies is said in this log and left down,
    as a lost machine would be; the head's death ends the cluster."""
    import argparse

    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("--root", type=Path, required=True, help="Where the nodes' logs go.")
    parser.add_argument("--gcs-port", type=int, required=True)
    parser.add_argument("--dashboard-port", type=int, required=True)
    args = parser.parse_args(argv)
    cluster = RayCluster(root=args.root, gcs_port=args.gcs_port, dashboard_port=args.dashboard_port)
    stopping: list[int] = []

    def stop(signum: int, _: object) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        cluster.start()
        print(f"ray cluster ready: {len(cluster.alive_nodes())} nodes, Jobs API {cluster.dashboard}",
              flush=True)
        reported: set[str] = set()
        while not stopping:
            for name, proc in cluster.procs.items():
                if proc.poll() is not None and name not in reported:
                    reported.add(name)
                    print(f"ray {name} exited with {proc.returncode}:\n{cluster.log_tail(name)}", flush=True)
                    if name == "head":
                        stopping.append(0)
            time.sleep(0.5)
    finally:
        cluster.stop()


if __name__ == "__main__":
    serve()
