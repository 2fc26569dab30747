"""The local platform: NATS, PostgreSQL, Temporal and the seven services as supervised processes.

Everything lives under ``$AICLOUD_HOME``: ``data/`` (JetStream, Postgres, Temporal), ``logs/``,
``traces/``, ``jobs/`` and ``run/stack.json`` (pids, ports, URLs). A second ``up`` on the same
home reuses its ports and data.

What runs, and with which environment, is the table in ``components``; how processes are
started, watched and stopped is ``supervisor``; what is kept on disk is ``state``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aicloud.local import components, identities, servers, supervisor
from aicloud.local.state import Component, Ports, StackFiles
from aicloud.local.supervisor import READY_TIMEOUT_S, Probe, StackError

Report = Callable[[str], None]


def default_home() -> Path:
    return Path(os.environ.get("AICLOUD_HOME", ".aicloud")).resolve()


class Stack:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.files = StackFiles(home)

    def ports(self, *, free: bool) -> Ports:
        return self.files.ports(free=free)

    def plan(self, ports: Ports, *, engine: str = "local", nats_nodes: int = 1,
             warn: Report = lambda _: None) -> tuple[list[Component], list[Component]]:
        return components.plan(self.files, ports, engine=engine, nats_nodes=nats_nodes, warn=warn)

    def spawn(self, component: Component) -> None:
        supervisor.spawn(component, cwd=self.home)

    def wait_ready(self, component: Component, probe: Probe, timeout: float = READY_TIMEOUT_S) -> float:
        return supervisor.wait_ready(component, probe, timeout)

    def probe(self, component: Component, ports: Ports) -> Probe:
        return components.probe(component, ports)

    def up(self, *, free_ports: bool, report: Report, engine: str = "local", nats_nodes: int = 1,
           warn: Report | None = None,
           before_services: Callable[[Ports], None] | None = None) -> list[Component]:
        """Start every component (infra first, then services, each group in parallel); with
        ``engine`` ray, a Ray cluster too, which runs the jobs. ``warn`` hears what does not
        run (an optional server that is not installed), default ``report``. ``nats_nodes`` 3:
        a NATS cluster of three, every stream on all three. ``before_services`` runs once the
        infrastructure is ready, before any service starts (a restore fills the servers)."""
        running = self.read_state()
        if running and all(supervisor.alive(c["pid"]) for c in running):
            report("already running; use `aicloud dev down` to stop it")
            return [Component.from_state(c) for c in running]
        self.down(report=lambda _: None)
        ports = self.ports(free=free_ports)
        infra, services = self.plan(ports, engine=engine, nats_nodes=nats_nodes, warn=warn or report)
        started: list[Component] = []
        try:
            for group in (infra, services):
                if group is services and before_services is not None:
                    before_services(ports)
                for component in group:
                    self.spawn(component)
                    started.append(component)
                self.write_state(started)
                supervisor.wait_ready_together(group, lambda c: self.probe(c, ports), report,
                                               timeout=components.ready_timeout)
        except BaseException:
            self.write_state(started)
            self.down(report=report)
            raise
        return started

    def restart(self, name: str, *, report: Report, grace_s: float = 10.0) -> float:
        """Stop one component (if it still runs) and start it again with the same settings; the
        others keep running. Seconds until it is ready again."""
        state = self.read_state()
        entry = next((e for e in state if e["name"] == name), None)
        if entry is None:
            known = ", ".join(str(e["name"]) for e in state) or "none: run `aicloud dev up`"
            raise StackError(f"no component {name!r} in this home (components: {known})")
        if supervisor.alive(entry.get("pid")):
            supervisor.terminate_groups([int(entry["pid"])], grace_s)
            report(f"stopped {name} (pid {entry['pid']})")
        elif isinstance(entry.get("pid"), int) and not supervisor.settle(int(entry["pid"]), grace_s) \
                and name == "postgres":
            # its dead postmaster is a zombie nobody has reaped yet: PostgreSQL would take it for a
            # live one ("lock file postmaster.pid already exists") and refuse to start
            servers.remove_stale_postmaster_pid(self.files.data / "postgres" / "data", int(entry["pid"]))
            report(f"postgres: pid {entry['pid']} is dead but not reaped; its lock file removed")
        component = Component.from_state(entry)
        self.spawn(component)
        self.write_state([asdict(component) if e is entry else e for e in state])
        took = self.wait_ready(component, self.probe(component, self.ports(free=False)))
        report(f"{name} ready in {took:.1f}s (pid {component.pid})")
        return took

    def down(self, *, report: Report, grace_s: float = 10.0) -> list[str]:
        """Stop the services, then the infrastructure (each group at once); nothing is left."""
        state = [e for e in self.read_state()
                 if isinstance(e.get("pid"), int) and supervisor.alive(e["pid"])]
        stopped = []
        for group in ([e for e in state if not components.is_infra(e["name"])],
                      [e for e in state if components.is_infra(e["name"])]):
            supervisor.terminate_groups([int(str(e["pid"])) for e in group], grace_s)
            for entry in group:
                stopped.append(str(entry["name"]))
                report(f"stopped {entry['name']} (pid {entry['pid']})")
        self._reap_sandboxes()
        self.files.forget_state()
        return stopped

    def _reap_sandboxes(self) -> None:
        """Sandboxes outlive a service that was killed (or stopped before it could clean up):
        end every agent sandbox, model replica and notebook of this home. The services' next
        start would, too."""
        markers = [str(self.scratch_dir(kind)) for kind in ("sandboxes", "serving", "notebooks")]
        supervisor.reap(markers, runsc_roots=(self.files.sandbox_dir / "state", self.home / "sandbox"))

    def scratch_dir(self, kind: str) -> Path:
        return self.files.scratch_dir(kind)

    def write_state(self, started: list[Component] | list[dict[str, Any]]) -> None:
        self.files.write_state(started)

    def read_state(self) -> list[dict[str, Any]]:
        return self.files.read_state()

    def exited(self) -> set[str]:
        """Components whose process is gone (cheap: no probes)."""
        return {str(e["name"]) for e in self.read_state() if not supervisor.alive(e.get("pid"))}

    def status(self) -> list[dict[str, object]]:
        """Each component: name, pid, url, address, healthy (process alive, its probe passing);
        a NATS server also says whom to connect as (``user``, ``password_file``: ops)."""
        state = self.read_state()
        ports = self.files.saved_ports() if state else {}
        rows = []
        for entry in state:
            component = Component.from_state(entry)
            alive = component.pid is not None and supervisor.alive(component.pid)
            healthy = alive and self.probe(component, ports)()
            rows.append({**component.public(), **self._login(component.name), "healthy": healthy})
        return rows

    def nats_login(self) -> dict[str, str]:
        """``user`` and ``password`` for ``nats.connect`` as ops on this stack's bus."""
        return identities.ops_login(self.home)

    def _login(self, name: str) -> dict[str, str]:
        login = self.nats_login() if name.startswith("nats") else {}
        if not login:
            return {}
        user = login["user"]
        return {"user": user, "password_file": str(identities.password_file(self.home, user))}
