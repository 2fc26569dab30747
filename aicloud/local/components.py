"""The stack's components as a table: each one's command line, URL, readiness check and
environment. Infrastructure (and the fake upstream) starts first, then the services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aicloud.local import identities, monitoring, ray_cluster, servers
from aicloud.local.servers import PostgresLayout
from aicloud.local.state import Component, Ports, StackFiles
from aicloud.local.supervisor import READY_TIMEOUT_S, Probe, http_ok

DATABASE = "aicloud"
DATABASE_PASSWORD = "postgres-password"  # under run/, like the other secrets
Env = dict[str, str]
Ready = Callable[[Component, Ports], bool]


@dataclass(frozen=True)
class Site:
    """What command lines and environments are made from: the home, its ports and database."""

    files: StackFiles
    ports: Ports
    postgres: PostgresLayout
    nats_nodes: int = 1

    @property
    def nats_url(self) -> str:
        """Every NATS server of the stack, comma-separated (one, or a cluster's three)."""
        return ",".join(f"nats://{self.local(nats_node(i))}" for i in range(1, self.nats_nodes + 1))

    @property
    def home(self) -> Path:
        return self.files.home

    def local(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def http(self, name: str) -> str:
        return f"http://{self.local(name)}"


def _no_env(_: Site) -> Env:
    return {}


@dataclass(frozen=True)
class Infra:
    """A server from a wheel that the services need, or a fake of something outside the platform."""

    name: str
    url: Callable[[Ports], str]
    argv: Callable[[Site], list[str]]
    ready: Ready
    env: Callable[[Site], Env] = _no_env
    user: Callable[[Site], str | None] = lambda _: None
    address: Callable[[Ports], str | None] = lambda _: None

    def component(self, site: Site) -> Component:
        return Component(self.name, self.url(site.ports), self.argv(site), str(site.files.log(self.name)),
                         env=self.env(site), user=self.user(site), address=self.address(site.ports))


@dataclass(frozen=True)
class Service:
    """``python -m services.<name>``, configured by ``AICLOUD_<NAME>_*`` variables."""

    name: str
    env: Callable[[Site], Env] = _no_env
    """Its own settings, without the prefix."""
    outside_env: Callable[[Site], Env] = _no_env
    """Variables read under their own names (the model providers' SDKs)."""

    @property
    def prefix(self) -> str:
        return f"AICLOUD_{self.name.upper().replace('-', '_')}_"

    def component(self, site: Site) -> Component:
        common = {
            "NATS_URL": site.nats_url,
            "NATS_USER": self.name,
            "NATS_PASSWORD": identities.password(site.files, self.name),
            "STREAM_REPLICAS": str(site.nats_nodes),
            "DATABASE_URL": servers.postgres_url(site.ports["postgres"], DATABASE,
                                                 socket_dir=site.postgres.socket_dir,
                                                 password=site.postgres.password),
            "HTTP_PORT": str(site.ports[self.name]),
            "TRACE_FILE": str(site.home / "traces" / f"{self.name}.jsonl"),
        }
        env = {f"{self.prefix}{key}": value for key, value in (common | self.env(site)).items()}
        module = f"services.{self.name.replace('-', '_')}"
        return Component(self.name, site.http(self.name), [sys.executable, "-m", module],
                         str(site.files.log(self.name)), env=env | self.outside_env(site))


def _local_gpus() -> str:
    return os.environ.get("AICLOUD_LOCAL_GPUS", "16")  # simulated


def _catalog(site: Site) -> Env:
    return {"DEMO_KEYS_FILE": str(site.home / "keys.json"),
            "PROVISIONER_URL": site.http("provisioner"),
            "LEDGER_URL": site.http("cost-ledger")}


def _cost_ledger(site: Site) -> Env:
    return {"ADMIN_TOKEN": site.files.secret("ledger-admin-token"),
            "POOL_GPUS": json.dumps({"h100-80gb": int(_local_gpus())})}


def _provisioner(site: Site) -> Env:
    home = site.home
    return {
        "TEMPORAL_ADDRESS": site.local("temporal"),
        "WORK_DIR": str(home / "jobs"),
        "ARTIFACT_ROOT": str(home / "artifacts"),
        "SANDBOX_HIDDEN_PATHS": json.dumps([str(home)]),
        "CATALOG_URL": site.http("catalog"),
        "SERVING_ROOT": str(site.files.scratch_dir("serving")),
        "NOTEBOOK_ROOT": str(site.files.scratch_dir("notebooks")),
        "NOTEBOOK_PROXY_PORT": str(site.ports["notebook-proxy"]),
        "VOLUME_ROOT": str(home / "volumes"),
        "HF_MIRROR": str(home / "hf-mirror"),
        # the "organisation's" MLflow store, unless you point the platform at your own server
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
        # a laptop demo judges canaries on 10 s of traffic (production: 60 s, 20 requests)
        "CANARY_WINDOW_S": os.environ.get("AICLOUD_CANARY_WINDOW_S", "10"),
        "CANARY_MIN_REQUESTS": "10",
    }


def _router(site: Site) -> Env:
    return {"ADMIN_TOKEN": site.files.secret("router-admin-token"),
            "DEMO_KEYS_FILE": str(site.home / "router-keys.json"),
            "USAGE_SPOOL": str(site.files.data / "router-usage.spool")}


def _router_providers(site: Site) -> Env:
    """Real providers when the developer configured them; otherwise the local fake."""
    fake, key = f"{site.http('fake-llm')}/v1", site.files.secret("fake-llm-key")
    env: Env = {}
    if "AICLOUD_OPENAI_BASE_URL" not in os.environ:
        env |= {"AICLOUD_OPENAI_BASE_URL": fake, "OPENAI_API_KEY": key}
    if "AICLOUD_ANTHROPIC_BASE_URL" not in os.environ:
        env |= {"AICLOUD_ANTHROPIC_BASE_URL": fake, "ANTHROPIC_API_KEY": key}
    return env


def _agent_runtime(site: Site) -> Env:
    # Sandbox state must be reachable by the sandboxes' own uids, so it cannot live under a
    # private home; one folder per home keeps two stacks from reaping each other's boxes.
    return {"CATALOG_URL": site.http("catalog"),
            "SANDBOX_DIR": str(site.files.sandbox_dir),
            "STATE_MASTER_KEYS_FILE": str(site.files.master_keys()),
            "STATE_ACTIVE_KEY": "k1",
            "ADMIN_TOKEN": site.files.secret("agent-runtime-admin-token"),
            "TEMPORAL_ADDRESS": site.local("temporal"),
            "ROUTER_URL": site.http("inference-router"),
            "ROUTER_KEYS_FILE": str(site.home / "router-keys.json")}


def _collector(site: Site) -> Env:
    found = monitoring.binaries()
    return {"ALERT_WEBHOOK_TOKEN": site.files.secret(monitoring.WEBHOOK_TOKEN),
            "PROMETHEUS_URL": site.http("prometheus") if found.prometheus else "",
            "ALERTMANAGER_URL": site.http("alertmanager") if found.alertmanager else "",
            "SLO_FILE": str(monitoring.SLO_FILE),
            # the quality judge asks the router with the platform team's key (the team pays)
            "ROUTER_URL": site.http("inference-router"),
            "JUDGE_KEYS_FILE": str(site.home / "router-keys.json")}


def _database_ready(component: Component, port: int) -> bool:
    if not servers.port_open(port):
        return False
    try:  # the server's environment carries the client's password for this check (and nothing reads it)
        servers.create_database(port, DATABASE, component.env.get("PGPASSWORD"))
    except subprocess.CalledProcessError:
        return False
    return True


def database_password(files: StackFiles) -> str:
    """The local PostgreSQL's password (role ``postgres``): made once, kept 0600 under run/."""
    return files.secret(DATABASE_PASSWORD)


def database_url(files: StackFiles, port: int) -> str:
    """The stack's database over TCP, password included: for tools and tests outside the services."""
    return servers.postgres_url(port, DATABASE, password=database_password(files))


# Outside the platform: a fake of OpenAI and Anthropic, so the router has providers offline.
NATS_CLUSTER_SIZES = (1, 3)


def nats_node(number: int, what: str = "") -> str:
    """The name of NATS server ``number`` (1: ``nats``, then ``nats-2``...), or of its ``what``
    port (``monitor``, ``route``)."""
    base = f"nats-{what}" if what else "nats"
    return base if number == 1 else f"{base}-{number}"


def _nats_ready(number: int) -> Ready:
    """JetStream is up and current: in a cluster, its meta group has a leader (before that no
    stream can be made); a lone server's streams are recovered."""
    return lambda _, p: http_ok(f"http://127.0.0.1:{p[nats_node(number, 'monitor')]}/healthz")


def _nats(nodes: int) -> list[Infra]:
    """One NATS server, or a cluster of ``nodes`` on this machine (routes between all)."""
    def argv(number: int) -> Callable[[Site], list[str]]:
        def make(site: Site) -> list[str]:
            config = identities.write_config(site.files)  # a user per service, ops, publisher
            if nodes == 1:
                return servers.nats_argv(port=site.ports["nats"], monitor_port=site.ports["nats-monitor"],
                                         store_dir=site.files.data / "nats", config=config)
            # its own store: a lone server's streams are not a cluster member's to recover
            store = site.files.data / "nats-cluster" / str(number)
            return servers.nats_argv(
                port=site.ports[nats_node(number)], monitor_port=site.ports[nats_node(number, "monitor")],
                store_dir=store, name=f"aicloud-local-{number}", config=config,
                cluster_port=site.ports[nats_node(number, "route")],
                routes=[site.ports[nats_node(n, "route")] for n in range(1, nodes + 1) if n != number])
        return make

    def url(number: int) -> Callable[[Ports], str]:
        return lambda p: f"nats://127.0.0.1:{p[nats_node(number)]}"

    return [Infra(nats_node(n), url=url(n), argv=argv(n), ready=_nats_ready(n)) for n in range(1, nodes + 1)]


INFRA: tuple[Infra, ...] = (
    Infra("postgres", url=lambda p: servers.postgres_url(p["postgres"], DATABASE),
          argv=lambda s: servers.postgres_argv(s.postgres, port=s.ports["postgres"]),
          user=lambda s: s.postgres.user,
          env=lambda s: {} if s.postgres.password is None else {"PGPASSWORD": s.postgres.password},
          ready=lambda c, p: _database_ready(c, p["postgres"])),
    Infra("temporal", url=lambda p: f"http://127.0.0.1:{p['temporal-ui']}",
          address=lambda p: f"127.0.0.1:{p['temporal']}",
          argv=lambda s: servers.temporal_argv(port=s.ports["temporal"], ui_port=s.ports["temporal-ui"],
                                               db_file=s.files.data / "temporal" / "temporal.db"),
          ready=lambda c, p: servers.port_open(p["temporal"]) and http_ok(c.url)),
    Infra("fake-llm", url=lambda p: f"http://127.0.0.1:{p['fake-llm']}",
          argv=lambda s: [sys.executable, "-m", "aicloud.local.fake_llm", "--port", str(s.ports["fake-llm"])],
          env=lambda s: {"AICLOUD_FAKE_LLM_API_KEY": s.files.secret("fake-llm-key")},
          ready=lambda c, _: http_ok(c.url + "/healthz")),
)
SERVICES: tuple[Service, ...] = (
    Service("catalog", _catalog),
    Service("quota", lambda _: {"NODE_GPUS": _local_gpus()}),
    Service("provisioner", _provisioner),
    Service("cost-ledger", _cost_ledger),
    Service("inference-router", _router, outside_env=_router_providers),
    Service("agent-runtime", _agent_runtime),
    Service("observability-collector", lambda s: _collector(s)),
)
# --engine ray: a real Ray cluster (a head and two worker nodes with simulated GPUs) runs the jobs
RAY = Infra("ray", url=lambda p: f"http://127.0.0.1:{p['ray-dashboard']}",
            address=lambda p: f"127.0.0.1:{p['ray']}",
            argv=lambda s: [sys.executable, "-m", "aicloud.local.ray_cluster",
                            "--root", str(s.files.data / "ray"), "--gcs-port", str(s.ports["ray"]),
                            "--dashboard-port", str(s.ports["ray-dashboard"])],
            ready=lambda c, _: _ray_ready(c.url))
ENGINES = ("local", "ray")


def _prometheus_argv(site: Site, binary: str, alerting: bool) -> list[str]:
    root = site.files.data / "prometheus"
    config = monitoring.write_yaml(root / "prometheus.yml", monitoring.prometheus_config(
        targets={svc.name: site.ports[svc.name] for svc in SERVICES},
        alertmanager_port=site.ports["alertmanager"] if alerting else None, rules_dir=root / "rules"))
    return monitoring.prometheus_argv(binary, config=config, data=root / "tsdb",
                                      port=site.ports["prometheus"])


def _alertmanager_argv(site: Site, binary: str) -> list[str]:
    root = site.files.data / "alertmanager"
    site.files.secret(monitoring.WEBHOOK_TOKEN)
    config = monitoring.write_yaml(root / "alertmanager.yml", monitoring.alertmanager_config(
        webhook_url=site.http("observability-collector") + monitoring.WEBHOOK_PATH,
        token_file=site.home / "run" / monitoring.WEBHOOK_TOKEN))
    return monitoring.alertmanager_argv(binary, config=config, data=root / "data",
                                        port=site.ports["alertmanager"])


def _prometheus_ready(component: Component, _: Ports) -> bool:
    """Prometheus and Alertmanager both answer ``/-/ready``."""
    return http_ok(component.url + "/-/ready")


def _monitoring(found: monitoring.Binaries) -> list[Infra]:
    """Prometheus and Alertmanager, each where it is installed."""
    infra = []
    if found.prometheus is not None:
        binary = found.prometheus
        infra.append(Infra("prometheus", url=lambda p: f"http://127.0.0.1:{p['prometheus']}",
                           argv=lambda s: _prometheus_argv(s, binary, found.alertmanager is not None),
                           ready=_prometheus_ready))
    if found.alertmanager is not None:
        manager = found.alertmanager
        infra.append(Infra("alertmanager", url=lambda p: f"http://127.0.0.1:{p['alertmanager']}",
                           argv=lambda s: _alertmanager_argv(s, manager),
                           ready=_prometheus_ready))
    return infra


MONITORING = ("prometheus", "alertmanager")
_READY: dict[str, Ready] = {infra.name: infra.ready for infra in (*INFRA, RAY)} | {
    name: _prometheus_ready for name in MONITORING} | {
    nats_node(n): _nats_ready(n) for n in range(1, max(NATS_CLUSTER_SIZES) + 1)}


def _ray_ready(dashboard: str) -> bool:
    return len(ray_cluster.alive_nodes(dashboard)) >= 1 + len(ray_cluster.LOCAL_NODES)


def _on_ray(site: Site) -> Env:
    return {"BACKEND": "ray", "RAY_ADDRESS": site.http("ray-dashboard")}


def plan(files: StackFiles, ports: Ports, *, engine: str = "local", nats_nodes: int = 1,
         warn: Callable[[str], None] = lambda _: None) -> tuple[list[Component], list[Component]]:
    """The infrastructure components and the services, ready to spawn; with ``engine`` ray the
    cluster is infrastructure too and the provisioner runs jobs on it; with ``nats_nodes`` 3,
    three clustered NATS servers and every stream on all three. Prometheus and Alertmanager
    run where installed; ``warn`` hears what is missing or refused."""
    if nats_nodes not in NATS_CLUSTER_SIZES:
        raise ValueError(f"a NATS cluster of {nats_nodes} is not offered: choose "
                         f"{' or '.join(map(str, NATS_CLUSTER_SIZES))} (an odd size keeps a majority)")
    files.logs.mkdir(parents=True, exist_ok=True)
    site = Site(files, ports, servers.postgres_prepare(files.data / "postgres", database_password(files)),
                nats_nodes=nats_nodes)
    found = monitoring.binaries()
    for line in found.missing():
        warn(line)
    if found.prometheus is not None:
        for line in monitoring.write_rules(files.data / "prometheus" / "rules", monitoring.runbook_base()):
            warn(line)
    infra = [*_nats(nats_nodes), *INFRA, *_monitoring(found), *([RAY] if engine == "ray" else [])]
    services = [Service("provisioner", lambda s: _provisioner(s) | _on_ray(s)) if engine == "ray"
                and svc.name == "provisioner" else svc for svc in SERVICES]
    return [i.component(site) for i in infra], [svc.component(site) for svc in services]


def probe(component: Component, ports: Ports) -> Probe:
    """The check ``up`` waits for; a service is ready when its ``/readyz`` answers 200."""
    ready = _READY.get(component.name, lambda c, _: http_ok(c.url + "/readyz"))
    return lambda: ready(component, ports)


def ready_timeout(component: Component) -> float:
    """A Ray cluster starts its nodes one after the other: it gets longer than the rest."""
    return 180.0 if component.name == RAY.name else READY_TIMEOUT_S


def is_infra(name: str) -> bool:
    return name in _READY
