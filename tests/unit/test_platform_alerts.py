"""The alert that pages when a platform service stops answering (guardrails/platform_alerts.py):
it passes promtool, fires after a minute of ``up == 0`` and not for a restart, and its runbook
link is the service's own section of docs/runbooks/outages.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from aicloud.local.components import SERVICES
from guardrails.platform_alerts import DOWN_FOR, platform_alert_rules
from tests.unit.promtool_fixtures import run_promtool

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "platform.yml"
    path.write_text(yaml.safe_dump(platform_alert_rules(), sort_keys=False))
    return path


def test_every_scraped_service_has_its_outage_section_where_the_alert_points() -> None:
    anchors = set(re.findall(r"^## (\S+)$", (ROOT / "docs/runbooks/outages.md").read_text(), re.M))
    missing = {svc.name for svc in SERVICES} - anchors
    assert not missing, f"docs/runbooks/outages.md has no section for {sorted(missing)}"
    rule = platform_alert_rules()["groups"][0]["rules"][0]
    assert rule["annotations"]["runbook_url"] == "docs/runbooks/outages.md#{{ $labels.job }}"
    assert rule["labels"] == {"severity": "page"} and rule["for"] == DOWN_FOR


def test_a_service_down_for_two_minutes_pages_with_its_runbook_and_a_restart_does_not(
        promtool: str, rules_file: Path) -> None:
    def up(job: str) -> str:
        return f'up{{job="{job}",instance="127.0.0.1:8001"}}'

    # 15 s samples: quota dies at 1m and stays down; cost-ledger is down for one scrape (a restart)
    test = {"interval": "15s", "input_series": [
        {"series": up("quota"), "values": "1x4 0x12"},
        {"series": up("cost-ledger"), "values": "1x4 0 1x11"},
        {"series": up("catalog"), "values": "1x16"}],
        "alert_rule_test": [
            {"eval_time": "90s", "alertname": "AicloudComponentDown", "exp_alerts": []},  # pending
            {"eval_time": "150s", "alertname": "AicloudComponentDown", "exp_alerts": [{
                "exp_labels": {"severity": "page", "job": "quota", "instance": "127.0.0.1:8001"},
                "exp_annotations": {
                    "summary": "quota is down",
                    "description": platform_alert_rules()["groups"][0]["rules"][0]["annotations"][
                        "description"].replace("{{ $labels.job }}", "quota").replace(
                        "{{ $labels.instance }}", "127.0.0.1:8001"),
                    "runbook_url": "https://git.example/outages.md#quota"}}]}]}
    rules_file.write_text(yaml.safe_dump(platform_alert_rules("https://git.example/outages.md")))
    spec = rules_file.parent / "platform-tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "15s",
                                    "tests": [test]}, sort_keys=False))
    result = run_promtool(promtool, "test", "rules", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = run_promtool(promtool, "check", "rules", rules_file)
    assert checked.returncode == 0 and "SUCCESS: 1 rules found" in checked.stdout
