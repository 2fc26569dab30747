"""Ports for a stack started with --free-ports: distinct, bindable, and outside the kernel's
ephemeral range (where an outgoing connection could take one before its server binds it)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicloud.dev import app
from aicloud.local import servers
from aicloud.local.components import INFRA, SERVICES, Site
from aicloud.local.servers import PostgresLayout, free_port
from aicloud.local.state import DEFAULT_PORTS, StackFiles


def ephemeral_range() -> range:
    low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    return range(int(low), int(high) + 1)


def test_free_ports_are_distinct_bindable_and_not_ephemeral() -> None:
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == 60
    assert not set(ports) & set(ephemeral_range())
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        taken.listen()
        # a three-port range, one of them busy: the other two come out, then the fallback
        monkeypatch.setattr(servers, "_PICK_FROM", range(busy - 1, busy + 2))
        monkeypatch.setattr(servers, "_HANDED", set())
        picked = [free_port() for _ in range(3)]
    assert sorted(picked[:2]) == [busy - 1, busy + 1]
    assert picked[2] not in (busy - 1, busy, busy + 1)


def test_dev_status_lists_temporals_ui_and_the_frontend_address_clients_dial(tmp_path: Path) -> None:
    """The UI is temporal's url; `temporal --address` and the SDKs need the gRPC frontend, the
    address the provisioner is given."""
    files = StackFiles(tmp_path)
    ports = files.ports(free=True)
    assert set(ports) == set(DEFAULT_PORTS)
    site = Site(files, ports, PostgresLayout(tmp_path / "pg", tmp_path / "pg-run", None))
    [temporal] = [infra.component(site) for infra in INFRA if infra.name == "temporal"]
    [provisioner] = [svc.component(site) for svc in SERVICES if svc.name == "provisioner"]
    frontend = f"127.0.0.1:{ports['temporal']}"
    assert temporal.url == f"http://127.0.0.1:{ports['temporal-ui']}"
    assert temporal.address == frontend == provisioner.env["AICLOUD_PROVISIONER_TEMPORAL_ADDRESS"]
    files.write_state([temporal, provisioner])

    as_json = CliRunner().invoke(app, ["status", "--json", "--home", str(tmp_path)])
    rows = {row["name"]: row for row in json.loads(as_json.stdout)}
    assert as_json.exit_code == 1  # nothing runs
    assert rows["temporal"]["url"] == temporal.url and rows["temporal"]["address"] == frontend
    assert rows["provisioner"]["address"] is None
    table = CliRunner().invoke(app, ["status", "--home", str(tmp_path)], terminal_width=200)
    assert "address" in table.stdout and frontend in table.stdout and temporal.url in table.stdout
    # nothing runs: each one points to its section of the outage runbook
    assert "provisioner is not healthy: docs/runbooks/outages.md#provisioner" in table.stdout


def test_every_component_has_a_section_in_the_outage_runbook() -> None:
    import re

    from aicloud.dev import OUTAGES, outage_anchor
    from aicloud.local.components import MONITORING, RAY, nats_node

    root = Path(__file__).resolve().parents[2]
    headings = re.findall(r"^## (.+)$", (root / OUTAGES).read_text(), flags=re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    names = [*(i.name for i in INFRA if i.name != "fake-llm"), *(s.name for s in SERVICES), *MONITORING,
             RAY.name, nats_node(1), nats_node(3)]
    assert {name: outage_anchor(name) for name in names if outage_anchor(name) not in anchors} == {}
