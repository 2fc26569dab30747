"""SLOs as files: the rules made from policies/slos.yaml pass promtool, page on a real burst and
stay quiet inside the budget; a broken file is refused and the last good rules keep serving."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from aicloud import slo as slo_cli
from guardrails import POLICY_DIR
from guardrails.slo import (
    ALERTS,
    WINDOWS,
    SloFileError,
    build_rules,
    load_or_keep,
    load_slos,
    write_rules,
)
from tests.unit.promtool_fixtures import run_promtool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SLOS = POLICY_DIR / "slos.yaml"
ROUTER_OK = 'aicloud_router_requests_total{status="ok",team="legal",model="gpt-4o-mini"}'
ROUTER_ERROR = 'aicloud_router_requests_total{status="error",team="legal",model="gpt-4o-mini"}'


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    return write_rules(build_rules(load_slos(SLOS)), tmp_path / "slo-rules.yaml")


def alert(rules: Path, slo: str, alertname: str) -> dict[str, Any]:
    groups = yaml.safe_load(rules.read_text())["groups"]
    group = next(g for g in groups if g["name"] == f"slo:{slo}")
    return next(r for r in group["rules"] if r.get("alert") == alertname)


def firing(rules: Path, slo: str, alertname: str) -> list[dict[str, Any]]:
    rule = alert(rules, slo, alertname)
    return [{"exp_labels": rule["labels"], "exp_annotations": rule["annotations"]}]


def unit_test(promtool: str, rules: Path, tests: list[dict[str, Any]]) -> str:
    spec = rules.parent / "slo-tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m",
                                    "tests": tests}, sort_keys=False))
    result = run_promtool(promtool, "test", "rules", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_shipped_slos_pass_promtool_check_rules(promtool: str, rules_file: Path) -> None:
    result = run_promtool(promtool, "check", "rules", rules_file)
    slos = load_slos(SLOS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(slos) * (len(WINDOWS) + len(ALERTS))} rules found" in result.stdout
    assert {"router-availability", "router-latency", "endpoint-availability", "job-start-latency",
            "ledger-freshness"} <= {s.name for s in slos}


def test_every_alert_carries_severity_slo_service_and_a_runbook_anchor(rules_file: Path) -> None:
    rule = alert(rules_file, "router-availability", "SLOErrorBudgetBurnFast")
    assert rule["labels"] == {"severity": "page", "slo": "router-availability",
                              "service": "inference-router"}
    assert rule["annotations"]["runbook_url"] == "docs/runbooks/slos.md#router-availability"
    assert {"summary", "description"} <= rule["annotations"].keys()
    ticket = alert(rules_file, "router-availability", "SLOErrorBudgetBurnTicket")
    assert ticket["labels"]["severity"] == "ticket"
    anchors = set(re.findall(r"^## (\S+)$", (ROOT / "docs/runbooks/slos.md").read_text(), re.M))
    assert {s.name for s in load_slos(SLOS)} <= anchors


def test_a_10_percent_error_burst_pages_within_ten_minutes_and_stops_soon_after(
        promtool: str, rules_file: Path) -> None:
    # six clean hours at 100 requests a minute, then 10 % errors from minute 360
    sustained = {"interval": "1m", "input_series": [
        {"series": ROUTER_OK, "values": "0+100x360 36090+90x60"},
        {"series": ROUTER_ERROR, "values": "0+0x360 10+10x60"}],
        "alert_rule_test": [
            {"eval_time": "365m", "alertname": "SLOErrorBudgetBurnFast", "exp_alerts": []},
            {"eval_time": "370m", "alertname": "SLOErrorBudgetBurnFast",
             "exp_alerts": firing(rules_file, "router-availability", "SLOErrorBudgetBurnFast")},
            {"eval_time": "370m", "alertname": "SLOErrorBudgetBurnSlow", "exp_alerts": []},
            {"eval_time": "385m", "alertname": "SLOErrorBudgetBurnSlow",
             "exp_alerts": firing(rules_file, "router-availability", "SLOErrorBudgetBurnSlow")}]}
    # the same burst for 20 minutes only: the 5m window lets the page end though the 1h one is high
    recovered = {"interval": "1m", "input_series": [
        {"series": ROUTER_OK, "values": "0+100x360 36090+90x19 37900+100x60"},
        {"series": ROUTER_ERROR, "values": "0+0x360 10+10x19 200+0x60"}],
        "alert_rule_test": [
            {"eval_time": "375m", "alertname": "SLOErrorBudgetBurnFast",
             "exp_alerts": firing(rules_file, "router-availability", "SLOErrorBudgetBurnFast")},
            {"eval_time": "390m", "alertname": "SLOErrorBudgetBurnFast", "exp_alerts": []}]}
    assert "SUCCESS" in unit_test(promtool, rules_file, [sustained, recovered])


def test_a_0_05_percent_error_rate_fires_nothing_for_ten_hours(promtool: str, rules_file: Path) -> None:
    quiet: list[dict[str, Any]] = [{"eval_time": at, "alertname": a.alert, "exp_alerts": []}
             for at in ("10m", "1h", "6h", "10h") for a in ALERTS]
    test = {"interval": "1m", "input_series": [
        {"series": ROUTER_OK, "values": "0+999.5x600"},
        {"series": ROUTER_ERROR, "values": "0+0.5x600"}],
        "alert_rule_test": quiet}
    assert "SUCCESS" in unit_test(promtool, rules_file, [test])


def test_slow_requests_page_on_the_routers_histogram_not_the_collectors(
        promtool: str, rules_file: Path) -> None:
    # from minute 60 half the router's requests take longer than 10.24 s; the collector's
    # histogram of the same name (error_type, no status) sees them all fast and must not dilute it
    router = 'gen_ai_client_operation_duration_seconds_{}{{status="ok",team="legal",model="m"{}}}'
    collector = 'gen_ai_client_operation_duration_seconds_{}{{error_type="",team="legal"{}}}'
    test = {"interval": "1m", "input_series": [
        {"series": router.format("bucket", ',le="10.24"'), "values": "0+100x60 6050+50x30"},
        {"series": router.format("count", ""), "values": "0+100x90"},
        {"series": collector.format("bucket", ',le="10.24"'), "values": "0+100x90"},
        {"series": collector.format("count", ""), "values": "0+100x90"}],
        "alert_rule_test": [
            {"eval_time": "70m", "alertname": "SLOErrorBudgetBurnFast", "exp_alerts": []},
            {"eval_time": "80m", "alertname": "SLOErrorBudgetBurnFast",
             "exp_alerts": firing(rules_file, "router-latency", "SLOErrorBudgetBurnFast")}]}
    assert "SUCCESS" in unit_test(promtool, rules_file, [test])


def broken(tmp_path: Path, old: str, new: str) -> Path:
    text = SLOS.read_text()
    assert old in text
    path = tmp_path / "slos.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_broken_slo_file_is_refused_naming_the_slo_and_the_field(tmp_path: Path) -> None:
    path = broken(tmp_path, "objective: 0.999", "objective: 1.5")
    with pytest.raises(SloFileError) as refused:
        load_slos(path)
    assert f"{path}: slo router-availability: objective: must be < 1" in str(refused.value)
    with pytest.raises(SloFileError, match=r"slo router-latency: indicator.latency.histogram: .* selector"):
        load_slos(broken(tmp_path, "histogram: gen_ai_client_operation_duration_seconds{status=\"ok\"}",
                         "histogram: histogram_quantile(0.99, x)"))
    both = r"slo router-availability: indicator.ratio_metric: give exactly one of good, bad"
    with pytest.raises(SloFileError, match=both):
        load_slos(broken(tmp_path, 'good: aicloud_router_requests_total{status="ok"}',
                         'bad: aicloud_router_requests_total{status="error"}\n        good: up'))


def test_load_or_keep_keeps_serving_the_last_good_rules(tmp_path: Path) -> None:
    good = load_or_keep(SLOS, None)
    assert good.error is None and good.rules is not None
    kept = load_or_keep(broken(tmp_path, "time_window: 28d", "time_window: four weeks"), good.rules)
    assert kept.rules is good.rules
    assert kept.error is not None and "time_window" in str(kept.error)
    nothing_yet = load_or_keep(tmp_path / "missing.yaml", None)
    assert nothing_yet.rules is None and "cannot read" in str(nothing_yet.error)


def test_the_cli_writes_the_rules_and_exits_2_on_a_broken_file(tmp_path: Path) -> None:
    aicloud = typer.Typer()
    aicloud.add_typer(slo_cli.app, name="slo")  # as aicloud/cli.py registers it
    out = tmp_path / "rules" / "slo.yaml"
    wrote = CliRunner().invoke(aicloud, ["slo", "rules", "--slos", str(SLOS), "--out", str(out),
                                         "--runbook-base", "https://git.example/slos.md"])
    assert wrote.exit_code == 0, wrote.output
    assert yaml.safe_load(out.read_text()) == build_rules(load_slos(SLOS),
                                                           runbook_base="https://git.example/slos.md")
    bad = broken(tmp_path, "objective: 0.995", "objective: 0")
    refused = CliRunner().invoke(aicloud, ["slo", "rules", "--slos", str(bad), "--out", str(out)])
    assert refused.exit_code == 2
    assert "slo endpoint-availability: objective: must be > 0 and < 1" in " ".join(refused.output.split())
    assert yaml.safe_load(out.read_text())["groups"], "the rules written before are left alone"
