"""What an SRE looks at, as PromQL: the live page ``/observability`` and the Grafana dashboard in
``deploy/grafana/`` are built from these same queries, so they never disagree.

The collector's GenAI histograms share names with the router's own; the collector's carry
``error_type`` and no ``status``, and PromQL's ``status=""`` matches a series without the label:
that picks the collector's, which also cover every provider and team. The router's token counts
name the model ``model``, the collector's ``gen_ai_request_model``: a non-empty one picks the
collector's again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.kit.gpu import DCGM_FB_USED, DCGM_GPU_UTIL

COLLECTOR = 'status=""'


@dataclass(frozen=True)
class Panel:
    id: str
    title: str
    query: str
    unit: str  # Grafana's unit id
    by: tuple[str, ...]  # the labels that name a row
    lowest_first: bool = False  # the page's order: where low is bad (quality), the worst first


def _quantile(q: float, histogram: str, by: str, extra: str = "") -> str:
    matchers = ",".join(m for m in (COLLECTOR, extra) if m)
    return (f"histogram_quantile({q}, sum by (le, {by}) "
            f"(rate({histogram}_bucket{{{matchers}}}[5m])))")


MODEL = "gen_ai_request_model"
PANELS: tuple[Panel, ...] = (
    Panel("tokens_per_s", "Tokens per second, by model",
          f"sum by ({MODEL}) (rate(gen_ai_client_token_usage_sum{{{MODEL}!=\"\"}}[1m]))", "short", (MODEL,)),
    Panel("requests_per_s", "Requests per second, by model",
          f"sum by ({MODEL}) (rate(gen_ai_client_operation_duration_seconds_count{{{COLLECTOR}}}[1m]))",
          "reqps", (MODEL,)),
    Panel("latency_p50", "Latency p50, by model",
          _quantile(0.5, "gen_ai_client_operation_duration_seconds", MODEL, 'error_type=""'), "s", (MODEL,)),
    Panel("latency_p99", "Latency p99, by model",
          _quantile(0.99, "gen_ai_client_operation_duration_seconds", MODEL, 'error_type=""'), "s", (MODEL,)),
    Panel("ttft_p50", "Time to first token p50, platform endpoints",
          _quantile(0.5, "gen_ai_server_time_to_first_token_seconds", MODEL), "s", (MODEL,)),
    Panel("gpu_memory", "GPU memory used (MiB), by job and replica",
          f"sum by (job_id, endpoint, team, gpu) (label_replace({DCGM_FB_USED}, \"job_id\", \"$1\", "
          "\"exported_job\", \"(.+)\"))", "decmbytes", ("job_id", "endpoint", "team", "gpu")),
    Panel("gpu_util", "GPU utilisation (%), by job and replica",
          f"avg by (job_id, endpoint, team) (label_replace({DCGM_GPU_UTIL}, \"job_id\", \"$1\", "
          "\"exported_job\", \"(.+)\"))", "percent", ("job_id", "endpoint", "team")),
    Panel("drift", "Input drift (PSI), by endpoint",
          "max by (endpoint, feature) (aicloud_endpoint_drift_score)", "short", ("endpoint", "feature")),
    Panel("quality", "Answer quality (judged, 0..1), by endpoint and version",
          "min by (endpoint, version) (aicloud_endpoint_quality_score)", "percentunit",
          ("endpoint", "version"), lowest_first=True),
    Panel("error_budget_burn_1h", "Error budget burn rate over 1 h, by SLO",
          "max by (slo, service) (slo:sli_error:ratio_rate1h)", "percentunit", ("slo", "service")),
)
"""The GPU gauges' ``job`` label (the workload) meets the scrape's own ``job``: Prometheus keeps
its own and renames the gauge's ``exported_job``, which the GPU panels show as ``job_id``."""


def grafana_dashboard() -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schema 39) of the same panels, on a Prometheus data source
    chosen at import (``DS_PROMETHEUS``)."""
    source = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    panels = [{
        "id": n + 1, "type": "timeseries", "title": panel.title, "datasource": source,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [{"refId": "A", "datasource": source, "expr": panel.query,
                     "legendFormat": " ".join(f"{{{{{label}}}}}" for label in panel.by)}],
    } for n, panel in enumerate(PANELS)]
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "aicloud: AI observability", "uid": "aicloud-observability", "schemaVersion": 39,
        "version": 1, "editable": True, "refresh": "10s", "tags": ["aicloud"],
        "time": {"from": "now-1h", "to": "now"}, "timezone": "utc", "panels": panels,
        "templating": {"list": []}, "annotations": {"list": []},
    }


DASHBOARD_FILE = "deploy/grafana/aicloud-observability.json"


def render_dashboard() -> str:
    return json.dumps(grafana_dashboard(), indent=2) + "\n"


if __name__ == "__main__":  # python -m services.observability_collector.panels: regenerate the file
    from pathlib import Path

    target = Path(__file__).resolve().parents[2] / DASHBOARD_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_dashboard())
    print(f"wrote {target}")
