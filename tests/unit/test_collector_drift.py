"""Endpoint input drift in the collector (services/observability_collector/drift.py): a shifted
input distribution crosses the alert threshold, the same distribution stays under, no score is
shown before there is enough to score, memory stays bounded; and the EndpointInputDrift rule
(guardrails/model_alerts.py) passes promtool and fires on the score."""

from __future__ import annotations

import math
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from contracts import EndpointDeleted, InferenceCompleted
from guardrails.model_alerts import model_alert_rules
from services.observability_collector.drift import DRIFT_THRESHOLD, DriftMonitor, endpoint_of, psi
from services.observability_collector.genai import OTHER
from services.observability_collector.handlers import PlatformMetrics
from tests.unit.promtool_fixtures import run_promtool

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCORE = "aicloud_endpoint_drift_score"
REFERENCE, LIVE = 1000, 500  # DriftMonitor's defaults


def completed(endpoint: str, tokens_in: int, *, version: str | None = "v1", target: str | None = None,
              status: str = "ok") -> InferenceCompleted:
    return InferenceCompleted.model_validate({
        "tenant": "legal", "request_id": "r", "key_id": "k", "model": endpoint,
        "target": f"platform/{endpoint}" if target is None else target, "version": version,
        "tokens_in": tokens_in, "tokens_out": 20, "latency_ms": 300.0, "status": status})


def lengths(seed: int, count: int, *, scale: float = 1.0) -> list[int]:
    """Prompt lengths as chat traffic has them: log-normal around 250 tokens, ``scale`` times."""
    draw = random.Random(seed)
    return [max(1, round(scale * math.exp(draw.gauss(5.5, 0.8)))) for _ in range(count)]


def score(registry: CollectorRegistry, endpoint: str) -> float | None:
    return registry.get_sample_value(SCORE, {"endpoint": endpoint, "feature": "input_tokens"})


def feed(monitor: DriftMonitor, endpoint: str, values: list[int], **fields: Any) -> None:
    for value in values:
        monitor.observe(completed(endpoint, value, **fields))


def test_a_shifted_input_distribution_crosses_the_threshold_and_an_unshifted_control_stays_under() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry)
    for endpoint in ("shifted", "control"):
        feed(monitor, endpoint, lengths(1, REFERENCE))
    feed(monitor, "shifted", lengths(2, LIVE))
    before = score(registry, "shifted")
    assert before is not None and before < 0.1, "the same distribution before the shift"
    crossed_after = None
    for n, value in enumerate(lengths(3, 2 * LIVE, scale=2.0)):  # prompts twice as long
        monitor.observe(completed("shifted", value))
        if crossed_after is None and (score(registry, "shifted") or 0) > DRIFT_THRESHOLD:
            crossed_after = n
    assert crossed_after is not None and crossed_after < LIVE, crossed_after
    assert (score(registry, "shifted") or 0) > 0.5, "a whole window of doubled prompts"
    # the control: another seed of the same distribution, watched for four windows
    highest = 0.0
    for value in lengths(4, 4 * LIVE):
        monitor.observe(completed("control", value))
        highest = max(highest, score(registry, "control") or 0.0)
    assert 0 < highest < 0.1


def test_no_score_is_shown_before_the_reference_and_the_live_window_are_full() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry)
    values = lengths(5, REFERENCE + LIVE)
    feed(monitor, "clause-risk", values[:REFERENCE])
    assert score(registry, "clause-risk") is None
    feed(monitor, "clause-risk", values[REFERENCE:-1])
    assert score(registry, "clause-risk") is None, "one request short of a full live window"
    feed(monitor, "clause-risk", values[-1:])
    assert score(registry, "clause-risk") is not None


def test_a_new_version_starts_a_new_reference_and_its_canary_traffic_does_not_restart_it() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry)
    feed(monitor, "clause-risk", lengths(6, REFERENCE + LIVE))
    assert score(registry, "clause-risk") is not None
    monitor.observe(completed("clause-risk", 300, version="v2"))
    assert score(registry, "clause-risk") is None, "v1's reference says nothing about v2"
    # v2 goes out as a canary: v1 and v2 interleave, and their inputs are now twice as long
    long_prompts = lengths(7, REFERENCE + LIVE, scale=2.0)
    for n, value in enumerate(long_prompts):
        monitor.observe(completed("clause-risk", value, version=("v1", "v2", None)[n % 3]))
    after = score(registry, "clause-risk")
    assert after is not None and after < 0.1, "the new normal is measured from the new deploy"


def test_ten_thousand_endpoint_names_keep_the_tracked_set_and_the_series_bounded() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry, reference_size=20, live_size=10, max_endpoints=500)
    values = lengths(8, 30)
    for n in range(10_000):
        feed(monitor, f"ep-{n}", values[:1])
    for n in range(10_000):
        feed(monitor, f"ep-{n}", values[1:] if n < 500 else values[:1])
    assert monitor.tracked == 500 and len(monitor.endpoints.seen) == 500
    shown = [s for m in registry.collect() for s in m.samples if s.name == SCORE]
    assert len(shown) == 500
    assert score(registry, "ep-9999") is None, "over the cap: not tracked, not mixed into __other__"
    assert score(registry, OTHER) is None
    assert monitor.endpoints.overflowed == 9_500 * 2


async def test_the_collector_counts_endpoints_over_the_cap_as_label_overflow() -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    await metrics.on_events([completed(f"ep-{n}", 100) for n in range(520)])
    assert metrics.drift.tracked == 500
    assert registry.get_sample_value("aicloud_metric_label_overflow_total", {"label": "endpoint"}) == 20


def test_other_providers_failed_requests_and_odd_targets_are_not_tracked() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry, reference_size=10, live_size=10)
    for target in ("openai/gpt-4o-mini", "anthropic/platform", "platform", "platform/", "-"):
        feed(monitor, "x", lengths(9, 30), target=target)
    feed(monitor, "clause-risk", [0] * 30, status="error")
    assert monitor.tracked == 0
    assert next(m for m in registry.collect() if m.name == SCORE).samples == []


def test_the_routers_target_for_a_versioned_endpoint_names_the_endpoint() -> None:
    # services/inference_router/endpoints.py: provider platform/<endpoint>/<version>, then the model
    assert endpoint_of("platform/clause-risk/v3/clause-risk") == "clause-risk"
    assert endpoint_of("platform/clause-risk") == "clause-risk"
    assert endpoint_of("openai/gpt-4o") is None and endpoint_of("platform") is None


async def test_a_deleted_endpoint_loses_its_series_and_frees_its_place() -> None:
    registry = CollectorRegistry()
    metrics = PlatformMetrics(registry)
    await metrics.on_events([completed("clause-risk", v) for v in lengths(10, REFERENCE + LIVE)])
    assert score(registry, "clause-risk") is not None
    await metrics.on_events([EndpointDeleted(tenant="legal", endpoint="clause-risk")])
    assert score(registry, "clause-risk") is None
    assert metrics.drift.tracked == 0 and "clause-risk" not in metrics.drift.endpoints.seen


def test_psi_is_zero_for_the_same_shares_and_finite_for_an_empty_bin() -> None:
    assert psi([0.5, 0.5], [50, 50], 100) == 0
    assert 0 < psi([0.5, 0.5], [100, 0], 100) < 10


def test_observe_keeps_up_with_the_collectors_event_rate() -> None:
    monitor = DriftMonitor(CollectorRegistry())
    events = [completed(f"ep-{n % 50}", v) for n, v in enumerate(lengths(11, 60_000))]
    started = time.perf_counter()
    for event in events:
        monitor.observe(event)
    elapsed = time.perf_counter() - started
    # the collector's whole budget is 20,000 events/s; drift may take a small share of it
    assert len(events) / elapsed > 50_000, f"{len(events) / elapsed:,.0f} events/s"


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "model-rules.yaml"
    path.write_text(yaml.safe_dump(model_alert_rules(), sort_keys=False))
    return path


def test_the_model_rules_pass_promtool_check_rules(promtool: str, rules_file: Path) -> None:
    result = run_promtool(promtool, "check", "rules", rules_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rules found" in result.stdout  # drift and quality


def test_the_drift_alert_carries_a_ticket_severity_and_a_runbook_anchor_that_exists() -> None:
    rule = model_alert_rules()["groups"][0]["rules"][0]
    assert rule["alert"] == "EndpointInputDrift" and rule["for"] == "2m"
    assert rule["expr"] == f"max by (endpoint) ({SCORE}) > {DRIFT_THRESHOLD:g}"
    assert rule["labels"] == {"severity": "ticket"}
    assert rule["annotations"]["runbook_url"] == "docs/runbooks/models.md#endpoint-input-drift"
    assert {"summary", "description"} <= rule["annotations"].keys()
    anchors = set(re.findall(r"^## (\S+)$", (ROOT / "docs/runbooks/models.md").read_text(), re.M))
    assert "endpoint-input-drift" in anchors
    absolute = model_alert_rules(runbook_base="https://git.example/models.md")
    assert absolute["groups"][0]["rules"][0]["annotations"]["runbook_url"] == (
        "https://git.example/models.md#endpoint-input-drift")


def test_a_drift_score_of_0_5_for_five_minutes_fires_and_0_05_fires_nothing(
        promtool: str, rules_file: Path) -> None:
    drifted = f'{SCORE}{{endpoint="clause-risk",feature="input_tokens",instance="collector:8000"}}'
    steady = f'{SCORE}{{endpoint="summarise",feature="input_tokens",instance="collector:8000"}}'
    test = {"interval": "1m", "input_series": [
        {"series": drifted, "values": "0.05x5 0.5x5"},
        {"series": steady, "values": "0.05x10"}],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "EndpointInputDrift", "exp_alerts": []},
            {"eval_time": "6m", "alertname": "EndpointInputDrift", "exp_alerts": []},  # pending
            {"eval_time": "10m", "alertname": "EndpointInputDrift", "exp_alerts": [{
                "exp_labels": {"severity": "ticket", "endpoint": "clause-risk"},
                "exp_annotations": expected_annotations("clause-risk", 0.5)}]}]}
    quiet = {"interval": "1m", "input_series": [{"series": steady, "values": "0.05x30"}],
             "alert_rule_test": [{"eval_time": at, "alertname": "EndpointInputDrift", "exp_alerts": []}
                                 for at in ("5m", "15m", "30m")]}
    spec = rules_file.parent / "model-tests.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [rules_file.name], "evaluation_interval": "1m",
                                    "tests": [test, quiet]}, sort_keys=False))
    result = run_promtool(promtool, "test", "rules", spec)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def expected_annotations(endpoint: str, value: float) -> dict[str, str]:
    """The rule's annotations as Prometheus renders them for ``endpoint`` at ``value``."""
    annotations = model_alert_rules()["groups"][0]["rules"][0]["annotations"]
    return {key: text.replace("{{ $labels.endpoint }}", endpoint)
            .replace('{{ $value | printf "%.2f" }}', f"{value:.2f}") for key, text in annotations.items()}
