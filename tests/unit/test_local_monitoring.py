"""The local stack's Prometheus and Alertmanager: configs their own checkers accept, rules from
the policies, a broken SLO file that keeps the last good rules, and missing binaries named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aicloud.local import components, monitoring, servers
from aicloud.local.state import DEFAULT_PORTS, StackFiles

pytestmark = pytest.mark.unit


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus prometheus-alertmanager)")
    return found


def check(*argv: str | Path) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_prometheus_config_and_its_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool")
    rules = tmp_path / "rules"
    assert monitoring.write_rules(rules, "https://git.example.com/runbooks") == []
    config = monitoring.write_yaml(tmp_path / "prometheus.yml", monitoring.prometheus_config(
        targets={"catalog": 8000, "inference-router": 8004}, alertmanager_port=9093, rules_dir=rules))
    out = check(promtool, "check", "config", config)
    assert "slos.yml" in out and "models.yml" in out and "platform.yml" in out
    written = yaml.safe_load((rules / "slos.yml").read_text())
    runbooks = {r["annotations"]["runbook_url"]
                for g in written["groups"] for r in g["rules"] if "alert" in r}
    assert "https://git.example.com/runbooks/slos.md#router-availability" in runbooks
    jobs = [job["job_name"] for job in yaml.safe_load(config.read_text())["scrape_configs"]]
    assert jobs == ["catalog", "inference-router"]


def test_alertmanager_config_passes_amtool_and_sends_to_the_collector(tmp_path: Path) -> None:
    amtool = tool("amtool")
    token = tmp_path / "token"
    token.write_text("secret")
    config = monitoring.write_yaml(tmp_path / "alertmanager.yml", monitoring.alertmanager_config(
        webhook_url="http://127.0.0.1:8006/v1/alerts/webhook", token_file=token))
    check(amtool, "check-config", config)
    hook = yaml.safe_load(config.read_text())["receivers"][0]["webhook_configs"][0]
    assert hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["credentials_file"] == str(token)


def test_a_broken_slo_file_keeps_the_last_good_rules_and_names_the_field(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    assert monitoring.write_rules(rules, "base") == []
    good = (rules / "slos.yml").read_text()
    broken = tmp_path / "slos.yaml"
    broken.write_text(monitoring.SLO_FILE.read_text().replace("objective: 0.999", "objective: 1.5", 1))
    warnings = monitoring.write_rules(rules, "base", slo_file=broken)
    assert len(warnings) == 1
    assert "router-availability: objective: must be < 1" in warnings[0]
    assert "the last good rules keep serving" in warnings[0]
    assert (rules / "slos.yml").read_text() == good


@pytest.fixture(autouse=True)
def no_initdb(monkeypatch: pytest.MonkeyPatch) -> None:
    """plan() would initdb a Postgres data folder: not what these tests are about."""
    monkeypatch.setattr(components.servers, "postgres_prepare",
                        lambda root, password=None: servers.PostgresLayout(root / "data", root / "run", None))


def test_without_the_binaries_the_stack_runs_and_says_so(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitoring, "binaries", lambda: monitoring.Binaries(None, None))
    heard: list[str] = []
    infra, services = components.plan(StackFiles(tmp_path), dict(DEFAULT_PORTS),
                                      warn=heard.append)
    names = {c.name for c in infra}
    assert "prometheus" not in names and "alertmanager" not in names
    assert {"nats", "postgres", "temporal"} <= names
    assert any(line.startswith("prometheus not installed") for line in heard)
    assert any(line.startswith("alertmanager not installed") for line in heard)
    collector = next(s for s in services if s.name == "observability-collector")
    assert collector.env["AICLOUD_OBSERVABILITY_COLLECTOR_PROMETHEUS_URL"] == ""


def test_with_the_binaries_prometheus_scrapes_every_service(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitoring, "binaries",
                        lambda: monitoring.Binaries("/usr/bin/prometheus", "/usr/bin/alertmanager"))
    infra, services = components.plan(StackFiles(tmp_path), dict(DEFAULT_PORTS))
    prometheus = next(c for c in infra if c.name == "prometheus")
    config = yaml.safe_load(Path(prometheus.argv[1].removeprefix("--config.file=")).read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == {s.name for s in services}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    assert next(c for c in infra if c.name == "alertmanager").argv[-1] == "--cluster.listen-address="


def test_a_nats_cluster_of_three_routes_to_each_other_and_every_service_knows_all_three(
        tmp_path: Path) -> None:
    ports = dict(DEFAULT_PORTS)
    infra, services = components.plan(StackFiles(tmp_path), ports, nats_nodes=3)
    nats = {c.name: c for c in infra if c.name.startswith("nats")}
    assert set(nats) == {"nats", "nats-2", "nats-3"}
    second = nats["nats-2"].argv
    assert second[second.index("--cluster") + 1] == f"nats://127.0.0.1:{ports['nats-route-2']}"
    assert second[second.index("--routes") + 1] == (
        f"nats://127.0.0.1:{ports['nats-route']},nats://127.0.0.1:{ports['nats-route-3']}")
    assert len({c.argv[c.argv.index("--server_name") + 1] for c in nats.values()}) == 3
    assert len({c.argv[c.argv.index("--store_dir") + 1] for c in nats.values()}) == 3
    quota = next(s for s in services if s.name == "quota")
    assert quota.env["AICLOUD_QUOTA_NATS_URL"].split(",") == [
        f"nats://127.0.0.1:{ports[n]}" for n in ("nats", "nats-2", "nats-3")]
    assert quota.env["AICLOUD_QUOTA_STREAM_REPLICAS"] == "3"
    lone, services = components.plan(StackFiles(tmp_path), ports)
    assert [c.name for c in lone if c.name.startswith("nats")] == ["nats"]
    assert "--cluster" not in lone[0].argv and services[0].env["AICLOUD_CATALOG_STREAM_REPLICAS"] == "1"
    with pytest.raises(ValueError, match="a NATS cluster of 2 is not offered"):
        components.plan(StackFiles(tmp_path), ports, nats_nodes=2)
