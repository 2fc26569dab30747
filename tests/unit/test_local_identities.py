"""The local stack runs NATS with a user per service (permissions from the contracts), the
publisher and ops, each with a random password kept 0600 under the home's run/."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from aicloud.local import components, identities, monitoring, servers
from aicloud.local.stack import Stack
from aicloud.local.state import DEFAULT_PORTS, Component, StackFiles
from contracts.flows import PUBLISHER, SERVICES
from contracts.permissions import OPS, grant

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_initdb(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan() would initdb a Postgres data folder: not what these tests are about."""
    monkeypatch.setattr(components.servers, "postgres_prepare",
                        lambda root, password=None: servers.PostgresLayout(root / "data", root / "run", None))
    monkeypatch.setattr(monitoring, "binaries", lambda: monitoring.Binaries(None, None))


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_every_service_gets_its_own_user_and_a_private_random_password(tmp_path: Path) -> None:
    _, services = components.plan(StackFiles(tmp_path), dict(DEFAULT_PORTS))
    passwords = set()
    for service in services:
        prefix = f"AICLOUD_{service.name.upper().replace('-', '_')}_"
        assert service.env[f"{prefix}NATS_USER"] == service.name
        password = service.env[f"{prefix}NATS_PASSWORD"]
        kept = identities.password_file(tmp_path, service.name)
        assert kept.read_text() == password and private(kept) and len(password) >= 32
        passwords.add(password)
    assert len(passwords) == len(services) == len(SERVICES)
    _, again = components.plan(StackFiles(tmp_path), dict(DEFAULT_PORTS))
    assert [s.env for s in again] == [s.env for s in services], "made once, then kept"


@pytest.mark.parametrize("nodes", [1, 3])
def test_nats_runs_with_the_generated_users_and_permissions(tmp_path: Path, nodes: int) -> None:
    infra, _ = components.plan(StackFiles(tmp_path), dict(DEFAULT_PORTS), nats_nodes=nodes)
    configs = {c.argv[c.argv.index("--config") + 1] for c in infra if c.name.startswith("nats")}
    assert len(configs) == 1, "every server of a cluster has the same users"
    config = Path(configs.pop())
    assert private(config)
    users = {u["user"]: u for u in json.loads(config.read_text())["authorization"]["users"]}
    assert set(users) == {*SERVICES, PUBLISHER, OPS}
    for name, user in users.items():
        assert user["password"] == identities.password_file(tmp_path, name).read_text()
        assert user["permissions"] == grant(name).as_nats()


def test_the_cli_connects_as_ops_and_status_says_how(tmp_path: Path) -> None:
    assert identities.ops_login(tmp_path) == {}, "a home without identities: no login"
    files = StackFiles(tmp_path)
    files.ports(free=False)
    identities.write_config(files)
    login = identities.ops_login(tmp_path)
    assert login == {"user": OPS, "password": identities.password_file(tmp_path, OPS).read_text()}
    files.write_state([Component("nats", "nats://127.0.0.1:4222", ["nats-server"], str(tmp_path / "l")),
                       Component("quota", "http://127.0.0.1:8001", ["python"], str(tmp_path / "q"))])
    rows = {row["name"]: row for row in Stack(tmp_path).status()}
    assert rows["nats"]["user"] == OPS and rows["nats"]["url"] == "nats://127.0.0.1:4222"
    assert Path(str(rows["nats"]["password_file"])).read_text() == login["password"]
    assert "password_file" not in rows["quota"]
    assert login["password"] not in json.dumps(list(rows.values()))
