"""Alerts on the platform's own components, as a Prometheus rules document.

``AicloudComponentDown`` fires when Prometheus has not scraped a service for ``DOWN_FOR``
(``up == 0``: the process is gone, hung, or its port answers nothing). It pages: a service that
stays down stops admissions, starts, billing or inference for every team. Its runbook link is the
component's own section of docs/runbooks/outages.md (each section is named after the service, the
scrape job's name), the same section ``aicloud dev status`` points to.

A service restarted by its supervisor is back within seconds (the fault suite measures 2-6 s),
so ``DOWN_FOR`` is long enough not to page for a restart and short enough that a dead service
is known within two minutes.
"""

from __future__ import annotations

from typing import Any

RUNBOOK_BASE = "docs/runbooks/outages.md"  # the chart may set an absolute URL, as for the SLO rules
DOWN_FOR = "1m"


def platform_alert_rules(runbook_base: str = RUNBOOK_BASE) -> dict[str, Any]:
    """The ``platform`` rules group: one alert per scraped service that is not answering."""
    down = {
        "alert": "AicloudComponentDown",
        "expr": "up == 0",
        "for": DOWN_FOR,
        "labels": {"severity": "page"},
        "annotations": {
            "summary": "{{ $labels.job }} is down",
            "description": (
                "Prometheus has not been able to scrape {{ $labels.job }} at {{ $labels.instance }} "
                f"for {DOWN_FOR}: the process is gone, hung, or not answering. What stops while it is "
                "down, what the platform does by itself, and what to do are in its runbook section."),
            "runbook_url": f"{runbook_base}#{{{{ $labels.job }}}}",
        },
    }
    return {"groups": [{"name": "platform", "rules": [down]}]}
