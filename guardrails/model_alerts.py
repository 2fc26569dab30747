"""Alerts on the platform's own model endpoints, as a Prometheus rules document.

``EndpointInputDrift`` reads the observability collector's ``aicloud_endpoint_drift_score``
(services/observability_collector/drift.py): the population stability index of an endpoint's
recent input lengths against its first requests after the deploy. It opens a ticket, not a
page: inputs that changed are a question for the model's owners, not an outage.

``EndpointQualityLow`` reads ``aicloud_endpoint_quality_score`` (services/observability_collector/
quality.py): the mean score an evaluator model gave a version's recent answers, against the
threshold of ``policies/quality.yaml``. A ticket too: the owners decide whether to roll back.
"""

from __future__ import annotations

from typing import Any

RUNBOOK_BASE = "docs/runbooks/models.md"  # the chart may set an absolute URL, as for the SLO rules
DRIFT_THRESHOLD = 0.2  # the collector's DRIFT_THRESHOLD; a library may not import a service
DRIFT_FOR = "2m"  # the score moves every few requests: two minutes above it is not one odd batch


QUALITY_FOR = "5m"


def model_alert_rules(runbook_base: str = RUNBOOK_BASE, *,
                      quality_threshold: float | None = None) -> dict[str, Any]:
    """The ``models`` rules group: an alert per endpoint whose inputs drifted, and per endpoint
    version whose judged answers fell below the quality policy's threshold."""
    if quality_threshold is None:
        from guardrails.quality import load_quality

        quality_threshold = load_quality().threshold
    drift = {
        "alert": "EndpointInputDrift",
        "expr": f"max by (endpoint) (aicloud_endpoint_drift_score) > {DRIFT_THRESHOLD:g}",
        "for": DRIFT_FOR,
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "Endpoint {{ $labels.endpoint }}: its inputs no longer look like at deploy",
            "description": (
                "The population stability index of input lengths on {{ $labels.endpoint }} is "
                "{{ $value | printf \"%.2f\" }} (above " f"{DRIFT_THRESHOLD:g} for {DRIFT_FOR}): "
                "its recent requests differ from its first requests after the deploy. The model "
                "may be answering inputs it was not built or evaluated for."),
            "runbook_url": f"{runbook_base}#endpoint-input-drift",
        },
    }
    quality = {
        "alert": "EndpointQualityLow",
        "expr": f"min by (endpoint, version) (aicloud_endpoint_quality_score) < {quality_threshold:g}",
        "for": QUALITY_FOR,
        "labels": {"severity": "ticket"},
        "annotations": {
            "summary": "Endpoint {{ $labels.endpoint }} version {{ $labels.version }}: its answers "
                       "are judged poor",
            "description": (
                "The evaluator model's mean score of the recent sampled answers of "
                "{{ $labels.endpoint }} {{ $labels.version }} is {{ $value | printf \"%.2f\" }} "
                f"(below {quality_threshold:g} for {QUALITY_FOR}; 1 is best)."),
            "runbook_url": f"{runbook_base}#endpoint-quality-low",
        },
    }
    return {"groups": [{"name": "models", "rules": [drift, quality]}]}
