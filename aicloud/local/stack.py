"""The local platform: NATS, PostgreSQL, Temporal and the seven services as supervised processes.

Everything lives under ``$AICLOUD_HOME``: ``data/`` (JetStream, Postgres, Temporal), ``logs/``,
``traces/``, ``jobs/`` and ``run/stack.json`` (pids, ports, URLs). A second ``up`` on the same
home reuses its ports and data.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from aicloud.local import servers

SERVICES: tuple[tuple[str, str, str], ...] = (
    # (component name, python module, env prefix)
    ("catalog", "services.catalog", "AICLOUD_CATALOG_"),
    ("quota", "services.quota", "AICLOUD_QUOTA_"),
    ("provisioner", "services.provisioner", "AICLOUD_PROVISIONER_"),
    ("cost-ledger", "services.cost_ledger", "AICLOUD_COST_LEDGER_"),
    ("inference-router", "services.inference_router", "AICLOUD_INFERENCE_ROUTER_"),
    ("agent-runtime", "services.agent_runtime", "AICLOUD_AGENT_RUNTIME_"),
    ("observability-collector", "services.observability_collector",
     "AICLOUD_OBSERVABILITY_COLLECTOR_"),
)
DEFAULT_PORTS: dict[str, int] = {
    "nats": 4222, "nats-monitor": 8222, "postgres": 5433, "temporal": 7233, "temporal-ui": 8233,
    "catalog": 8000, "quota": 8001, "provisioner": 8002, "cost-ledger": 8003,
    "inference-router": 8004, "agent-runtime": 8005, "observability-collector": 8006,
    "fake-llm": 8010, "notebook-proxy": 8890,
}
# Outside the platform: a fake of OpenAI and Anthropic, so the router has providers offline.
INFRA = ("nats", "postgres", "temporal", "fake-llm")
DATABASE = "aicloud"
READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A component failed; the message names it and quotes the tail of its log."""


def default_home() -> Path:
    return Path(os.environ.get("AICLOUD_HOME", ".aicloud")).resolve()


@dataclass
class Component:
    name: str
    url: str
    argv: list[str]
    log: str
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    pid: int | None = None
    started_at: float | None = None

    @classmethod
    def from_state(cls, entry: dict[str, Any]) -> Component:
        return cls(**{k: v for k, v in entry.items() if k in cls.__dataclass_fields__})

    def public(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "url": self.url, "log": self.log}


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_file = home / "run" / "stack.json"

    # -- planning -----------------------------------------------------------------------
    def ports(self, *, free: bool) -> dict[str, int]:
        """Ports from the last run on this home, or defaults, or free ones (--free-ports)."""
        saved = self.home / "run" / "ports.json"
        if free:
            ports = {name: servers.free_port() for name in DEFAULT_PORTS}
        elif saved.exists():
            ports = {**DEFAULT_PORTS, **json.loads(saved.read_text())}
        else:
            ports = dict(DEFAULT_PORTS)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(ports, indent=2))
        return ports

    def plan(self, ports: dict[str, int]) -> tuple[list[Component], list[Component]]:
        """The infrastructure components and the services, ready to spawn."""
        data, logs = self.home / "data", self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pg = servers.postgres_prepare(data / "postgres")
        infra = [
            Component("nats", f"nats://127.0.0.1:{ports['nats']}",
                      servers.nats_argv(port=ports["nats"], monitor_port=ports["nats-monitor"],
                                        store_dir=data / "nats"),
                      str(logs / "nats.log")),
            Component("postgres", servers.postgres_url(ports["postgres"], DATABASE),
                      servers.postgres_argv(pg, port=ports["postgres"]),
                      str(logs / "postgres.log"), user=pg.user),
            Component("temporal", f"http://127.0.0.1:{ports['temporal-ui']}",
                      servers.temporal_argv(port=ports["temporal"], ui_port=ports["temporal-ui"],
                                            db_file=data / "temporal" / "temporal.db"),
                      str(logs / "temporal.log")),
            Component("fake-llm", f"http://127.0.0.1:{ports['fake-llm']}",
                      [sys.executable, "-m", "aicloud.local.fake_llm", "--port", str(ports["fake-llm"])],
                      str(logs / "fake-llm.log"),
                      env={"AICLOUD_FAKE_LLM_API_KEY": self.secret("fake-llm-key")}),
        ]
        return infra, [self._service(name, module, prefix, ports)
                       for name, module, prefix in SERVICES]

    def _service(self, name: str, module: str, prefix: str, ports: dict[str, int]) -> Component:
        env = {
            f"{prefix}NATS_URL": f"nats://127.0.0.1:{ports['nats']}",
            f"{prefix}DATABASE_URL": servers.postgres_url(
                ports["postgres"], DATABASE, socket_dir=self.home / "data" / "postgres" / "run"),
            f"{prefix}HTTP_PORT": str(ports[name]),
            f"{prefix}TRACE_FILE": str(self.home / "traces" / f"{name}.jsonl"),
        }
        if name == "quota":
            env[f"{prefix}NODE_GPUS"] = os.environ.get("AICLOUD_LOCAL_GPUS", "16")  # simulated
        if name == "catalog":
            env[f"{prefix}DEMO_KEYS_FILE"] = str(self.home / "keys.json")
            env[f"{prefix}PROVISIONER_URL"] = f"http://127.0.0.1:{ports['provisioner']}"
            env[f"{prefix}LEDGER_URL"] = f"http://127.0.0.1:{ports['cost-ledger']}"
        if name == "cost-ledger":
            env[f"{prefix}ADMIN_TOKEN"] = self.secret("ledger-admin-token")
            env[f"{prefix}POOL_GPUS"] = json.dumps(
                {"h100-80gb": int(os.environ.get("AICLOUD_LOCAL_GPUS", "16"))})
        if name == "inference-router":
            env.update(self._router_env(prefix, ports))
        if name == "agent-runtime":
            env.update(self._agent_runtime_env(prefix, ports))
        if name == "provisioner":
            env[f"{prefix}TEMPORAL_ADDRESS"] = f"127.0.0.1:{ports['temporal']}"
            env[f"{prefix}WORK_DIR"] = str(self.home / "jobs")
            env[f"{prefix}ARTIFACT_ROOT"] = str(self.home / "artifacts")
            env[f"{prefix}SANDBOX_HIDDEN_PATHS"] = json.dumps([str(self.home)])
            env[f"{prefix}CATALOG_URL"] = f"http://127.0.0.1:{ports['catalog']}"
            env[f"{prefix}SERVING_ROOT"] = str(self.scratch_dir("serving"))
            env[f"{prefix}NOTEBOOK_ROOT"] = str(self.scratch_dir("notebooks"))
            env[f"{prefix}NOTEBOOK_PROXY_PORT"] = str(ports["notebook-proxy"])
            env[f"{prefix}VOLUME_ROOT"] = str(self.home / "volumes")
            env[f"{prefix}HF_MIRROR"] = str(self.home / "hf-mirror")
            # the "organisation's" MLflow store, unless you point the platform at your own server
            env[f"{prefix}MLFLOW_TRACKING_URI"] = os.environ.get(
                "MLFLOW_TRACKING_URI", f"sqlite:///{self.home / 'mlflow.db'}")
            # a laptop demo judges canaries on 10 s of traffic (production: 60 s, 20 requests)
            env[f"{prefix}CANARY_WINDOW_S"] = os.environ.get("AICLOUD_CANARY_WINDOW_S", "10")
            env[f"{prefix}CANARY_MIN_REQUESTS"] = "10"
        return Component(name, f"http://127.0.0.1:{ports[name]}",
                         [sys.executable, "-m", module], str(self.home / "logs" / f"{name}.log"),
                         env=env)

    # -- running ------------------------------------------------------------------------
    def spawn(self, component: Component) -> None:
        with open(component.log, "ab") as log:
            proc = subprocess.Popen(
                component.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **component.env}, user=component.user,
                start_new_session=True, cwd=self.home,
            )
        component.pid, component.started_at = proc.pid, time.time()

    def wait_ready(self, component: Component, probe: Callable[[], bool],
                   timeout: float = READY_TIMEOUT_S) -> float:
        """Seconds until ``probe`` passed; raises StackError with the log tail otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if component.pid is None or not _alive(component.pid):
                raise StackError(f"{component.name} exited during start-up\n{tail(component.log)}")
            if probe():
                return time.monotonic() - start
            time.sleep(0.05)
        raise StackError(f"{component.name} was not ready after {timeout:.0f} s\n{tail(component.log)}")

    def probe(self, component: Component, ports: dict[str, int]) -> Callable[[], bool]:
        if component.name == "nats":
            return lambda: _http_ok(f"http://127.0.0.1:{ports['nats-monitor']}/healthz?js-enabled-only=true")
        if component.name == "postgres":
            return lambda: _database_ready(ports["postgres"])
        if component.name == "temporal":
            return lambda: servers.port_open(ports["temporal"]) and _http_ok(component.url)
        if component.name == "fake-llm":
            return lambda: _http_ok(component.url + "/healthz")
        return lambda: _http_ok(component.url + "/readyz")

    def up(self, *, free_ports: bool, report: Callable[[str], None]) -> list[Component]:
        """Start every component (infra first, then services, each group in parallel)."""
        running = self.read_state()
        if running and all(_alive(c["pid"]) for c in running):
            report("already running; use `aicloud dev down` to stop it")
            return [Component.from_state(c) for c in running]
        self.down(report=lambda _: None)
        ports = self.ports(free=free_ports)
        infra, services = self.plan(ports)
        started: list[Component] = []
        try:
            for group in (infra, services):
                for component in group:
                    self.spawn(component)
                    started.append(component)
                self.write_state(started)
                self._await_group(group, ports, report)
        except BaseException:
            self.write_state(started)
            self.down(report=report)
            raise
        return started

    def _await_group(self, group: list[Component], ports: dict[str, int],
                     report: Callable[[str], None]) -> None:
        with ThreadPoolExecutor(max_workers=len(group)) as pool:
            futures = {c.name: pool.submit(self.wait_ready, c, self.probe(c, ports)) for c in group}
            for name, future in futures.items():
                report(f"{name} ready in {future.result():.1f}s")

    def restart(self, name: str, *, report: Callable[[str], None], grace_s: float = 10.0) -> float:
        """Stop one component (if it still runs) and start it again with the same settings; the
        others keep running. Seconds until it is ready again."""
        state = self.read_state()
        entry = next((e for e in state if e["name"] == name), None)
        if entry is None:
            known = ", ".join(str(e["name"]) for e in state) or "none: run `aicloud dev up`"
            raise StackError(f"no component {name!r} in this home (components: {known})")
        if _alive(entry.get("pid")):
            _terminate_groups([int(entry["pid"])], grace_s)
            report(f"stopped {name} (pid {entry['pid']})")
        component = Component.from_state(entry)
        self.spawn(component)
        self.write_state([asdict(component) if e is entry else e for e in state])
        took = self.wait_ready(component, self.probe(component, self.ports(free=False)))
        report(f"{name} ready in {took:.1f}s (pid {component.pid})")
        return took

    def down(self, *, report: Callable[[str], None], grace_s: float = 10.0) -> list[str]:
        """Stop the services, then the infrastructure (each group at once); nothing is left."""
        state = [e for e in self.read_state() if isinstance(e.get("pid"), int) and _alive(e["pid"])]
        infra_names = set(INFRA)
        stopped = []
        for group in ([e for e in state if e["name"] not in infra_names],
                      [e for e in state if e["name"] in infra_names]):
            _terminate_groups([int(str(e["pid"])) for e in group], grace_s)
            for entry in group:
                stopped.append(str(entry["name"]))
                report(f"stopped {entry['name']} (pid {entry['pid']})")
        self._reap_sandboxes()
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    def _router_env(self, prefix: str, ports: dict[str, int]) -> dict[str, str]:
        fake = f"http://127.0.0.1:{ports['fake-llm']}/v1"
        env = {f"{prefix}ADMIN_TOKEN": self.secret("router-admin-token"),
               f"{prefix}DEMO_KEYS_FILE": str(self.home / "router-keys.json"),
               f"{prefix}USAGE_SPOOL": str(self.home / "data" / "router-usage.spool")}
        # Real providers when the developer configured them; otherwise the local fake.
        if "AICLOUD_OPENAI_BASE_URL" not in os.environ:
            env |= {"AICLOUD_OPENAI_BASE_URL": fake, "OPENAI_API_KEY": self.secret("fake-llm-key")}
        if "AICLOUD_ANTHROPIC_BASE_URL" not in os.environ:
            env |= {"AICLOUD_ANTHROPIC_BASE_URL": fake, "ANTHROPIC_API_KEY": self.secret("fake-llm-key")}
        return env

    @property
    def sandbox_dir(self) -> Path:
        return self.scratch_dir("sandboxes")

    def scratch_dir(self, kind: str) -> Path:
        """Per-home folders outside the home: sandboxes' own uids must reach them, and Unix
        socket paths inside them must stay under 108 bytes."""
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        return Path(f"/var/tmp/aicloud-{kind}-{digest}")

    def _reap_sandboxes(self) -> None:
        """Sandboxes outlive a service that was killed (or stopped before it could clean up):
        end every agent sandbox, model replica and notebook of this home. The services' next
        start would, too."""
        markers = [str(self.scratch_dir(kind)) for kind in ("sandboxes", "serving", "notebooks")]
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in arg for arg in proc.info["cmdline"] or () for marker in markers):
                    proc.kill()
        for state in (self.sandbox_dir / "state", self.home / "sandbox"):
            if not shutil.which("runsc") or not state.is_dir():
                continue
            listed = subprocess.run(["runsc", "--root", str(state), "list", "-quiet"], capture_output=True,
                                    text=True, check=False)
            for container in listed.stdout.split():
                subprocess.run(["runsc", "--root", str(state), "delete", "--force", container],
                               capture_output=True, check=False)

    def _agent_runtime_env(self, prefix: str, ports: dict[str, int]) -> dict[str, str]:
        master_keys = self.home / "run" / "agent-state-master-keys.json"
        if not master_keys.exists():
            master_keys.parent.mkdir(parents=True, exist_ok=True)
            master_keys.write_text(json.dumps({"k1": base64.b64encode(secrets.token_bytes(32)).decode()}))
            master_keys.chmod(0o600)
        # Sandbox state must be reachable by the sandboxes' own uids, so it cannot live under a
        # private home; one folder per home keeps two stacks from reaping each other's boxes.
        return {f"{prefix}CATALOG_URL": f"http://127.0.0.1:{ports['catalog']}",
                f"{prefix}SANDBOX_DIR": str(self.sandbox_dir),
                f"{prefix}STATE_MASTER_KEYS_FILE": str(master_keys),
                f"{prefix}STATE_ACTIVE_KEY": "k1",
                f"{prefix}ADMIN_TOKEN": self.secret("agent-runtime-admin-token"),
                f"{prefix}TEMPORAL_ADDRESS": f"127.0.0.1:{ports['temporal']}",
                f"{prefix}ROUTER_URL": f"http://127.0.0.1:{ports['inference-router']}",
                f"{prefix}ROUTER_KEYS_FILE": str(self.home / "router-keys.json")}

    def secret(self, name: str) -> str:
        """A random secret of this home, made once and kept (0600) under run/."""
        path = self.home / "run" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    # -- state --------------------------------------------------------------------------
    def write_state(self, components: list[Component] | list[dict[str, Any]]) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        entries = [c if isinstance(c, dict) else asdict(c) for c in components]
        tmp.write_text(json.dumps(entries, indent=2))
        tmp.chmod(0o600)  # holds each component's environment, secrets included
        tmp.replace(self.state_file)

    def read_state(self) -> list[dict[str, Any]]:
        if not self.state_file.exists():
            return []
        return list(json.loads(self.state_file.read_text()))

    def exited(self) -> set[str]:
        """Components whose process is gone (cheap: no probes)."""
        return {str(e["name"]) for e in self.read_state() if not _alive(e.get("pid"))}

    def status(self) -> list[dict[str, object]]:
        """Each component: name, pid, url, healthy (process alive and its probe passing)."""
        state = self.read_state()
        ports = json.loads((self.home / "run" / "ports.json").read_text()) if state else {}
        rows = []
        for entry in state:
            component = Component.from_state(entry)
            alive = component.pid is not None and _alive(component.pid)
            healthy = alive and self.probe(component, ports)()
            rows.append({**component.public(), "healthy": healthy})
        return rows


def tail(path: str, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(f"  | {line}" for line in text[-lines:])


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _terminate_groups(pids: list[int], grace_s: float) -> None:
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


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def _database_ready(port: int) -> bool:
    if not servers.port_open(port):
        return False
    try:
        servers.create_database(port, DATABASE)
    except subprocess.CalledProcessError:
        return False
    return True
