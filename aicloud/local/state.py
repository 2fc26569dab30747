"""What a local stack keeps: files under ``$AICLOUD_HOME`` (ports, the running components,
secrets) and the scratch folders outside it that belong to that home."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aicloud.local import servers

Ports = dict[str, int]
DEFAULT_PORTS: Ports = {
    "nats": 4222, "nats-monitor": 8222, "nats-route": 6222,  # and --nats-cluster 3's others:
    "nats-2": 4223, "nats-monitor-2": 8223, "nats-route-2": 6223,
    "nats-3": 4224, "nats-monitor-3": 8224, "nats-route-3": 6224,
    "postgres": 5433, "temporal": 7233, "temporal-ui": 8233,
    "catalog": 8000, "quota": 8001, "provisioner": 8002, "cost-ledger": 8003,
    "inference-router": 8004, "agent-runtime": 8005, "observability-collector": 8006,
    "fake-llm": 8010, "notebook-proxy": 8890, "ray": 6380, "ray-dashboard": 8265,
    "prometheus": 9090, "alertmanager": 9093,
}


@dataclass
class Component:
    """One supervised process, as ``run/stack.json`` records it."""

    name: str
    url: str
    argv: list[str]
    log: str
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    pid: int | None = None
    started_at: float | None = None
    address: str | None = None
    """Where clients connect when that is not ``url``: Temporal's frontend (gRPC), whose UI is
    the url, for ``temporal --address`` and the SDKs."""

    @classmethod
    def from_state(cls, entry: dict[str, Any]) -> Component:
        return cls(**{k: v for k, v in entry.items() if k in cls.__dataclass_fields__})

    def public(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "url": self.url, "address": self.address,
                "log": self.log}


class StackFiles:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state_file = home / "run" / "stack.json"
        self.ports_file = home / "run" / "ports.json"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def ports(self, *, free: bool) -> Ports:
        """Ports from the last run on this home, or defaults, or free ones (--free-ports)."""
        if free:
            ports = {name: servers.free_port() for name in DEFAULT_PORTS}
        elif self.ports_file.exists():
            ports = {**DEFAULT_PORTS, **json.loads(self.ports_file.read_text())}
        else:
            ports = dict(DEFAULT_PORTS)
        self.ports_file.parent.mkdir(parents=True, exist_ok=True)
        self.ports_file.write_text(json.dumps(ports, indent=2))
        return ports

    def saved_ports(self) -> Ports:
        return dict(json.loads(self.ports_file.read_text()))

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

    def forget_state(self) -> None:
        if self.state_file.exists():
            self.state_file.unlink()

    def secret(self, name: str) -> str:
        """A random secret of this home, made once and kept (0600) under run/."""
        path = self.home / "run" / name
        if not path.exists():
            write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def master_keys(self) -> Path:
        """The agent runtime's keys for agent state (key id ``k1``), made once and kept (0600)."""
        path = self.home / "run" / "agent-state-master-keys.json"
        if not path.exists():
            write_private(path, json.dumps({"k1": base64.b64encode(secrets.token_bytes(32)).decode()}))
        return path

    @property
    def sandbox_dir(self) -> Path:
        return self.scratch_dir("sandboxes")

    def scratch_dir(self, kind: str) -> Path:
        """Per-home folders outside the home: sandboxes' own uids must reach them, and Unix
        socket paths inside them must stay under 108 bytes."""
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:10]
        return Path(f"/var/tmp/aicloud-{kind}-{digest}")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only, from the first byte on (a file
    written first and chmod-ed after is readable by anyone in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)
