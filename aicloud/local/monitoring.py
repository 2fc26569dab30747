"""Prometheus and Alertmanager for the local stack: their config files, rules and command lines.

Prometheus scrapes every service's ``/metrics`` and evaluates the rules made from the policies
(the SLOs' burn-rate alerts, the model alerts); Alertmanager sends what fires to the
observability-collector's webhook, which puts it on the bus (``aicloud.alerts.fired.v1``).

Both are optional: Debian's ``prometheus`` and ``prometheus-alertmanager`` packages (``.ci/run``
installs them). Where one is missing, ``dev up`` says so and the rest of the platform runs.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guardrails import POLICY_DIR

REPO = POLICY_DIR.parent
SLO_FILE = POLICY_DIR / "slos.yaml"
SCRAPE_INTERVAL = os.environ.get("AICLOUD_PROMETHEUS_INTERVAL", "2s")  # a laptop: see alerts soon
WEBHOOK_PATH = "/v1/alerts/webhook"
WEBHOOK_TOKEN = "alertmanager-webhook-token"  # under $AICLOUD_HOME/run, shared with the collector
INSTALL_HINT = "apt-get install prometheus prometheus-alertmanager"


@dataclass(frozen=True)
class Binaries:
    prometheus: str | None
    alertmanager: str | None

    def missing(self) -> list[str]:
        """A line per missing server, for ``dev up`` to print."""
        lines = []
        if self.prometheus is None:
            lines.append(f"prometheus not installed: no metrics history, SLO rules or alerts "
                         f"({INSTALL_HINT})")
        if self.alertmanager is None:
            lines.append(f"alertmanager not installed: alerts fire in Prometheus but page nobody "
                         f"({INSTALL_HINT})")
        return lines


def binaries() -> Binaries:
    return Binaries(
        prometheus=shutil.which("prometheus"),
        alertmanager=shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"))


def runbook_base() -> str:
    """Where the alerts' runbook links point: the repository's runbooks on this machine, unless
    ``AICLOUD_SLO_RUNBOOK_BASE`` names the team's own (a Git web URL)."""
    return os.environ.get("AICLOUD_SLO_RUNBOOK_BASE") or f"file://{REPO / 'docs' / 'runbooks'}"


def rule_documents(base: str, slo_file: Path = SLO_FILE) -> dict[str, dict[str, Any]]:
    """The rules files Prometheus loads, by file name; raises SloFileError on a broken SLO file."""
    from guardrails.model_alerts import model_alert_rules
    from guardrails.platform_alerts import platform_alert_rules
    from guardrails.slo import build_rules, load_slos

    return {"slos.yml": build_rules(load_slos(slo_file), runbook_base=f"{base}/slos.md"),
            "models.yml": model_alert_rules(runbook_base=f"{base}/models.md"),
            "platform.yml": platform_alert_rules(runbook_base=f"{base}/outages.md")}


def write_rules(rules_dir: Path, base: str, slo_file: Path = SLO_FILE) -> list[str]:
    """Write the rules; a broken policy keeps the files already there (the last good rules) and
    comes back as a warning naming the file and field."""
    from guardrails.slo import SloFileError
    from guardrails.slo import write_rules as write_one

    try:
        documents = rule_documents(base, slo_file)
    except SloFileError as exc:
        kept = "the last good rules keep serving" if any(rules_dir.glob("*.yml")) else "no rules loaded"
        return [f"SLO file refused ({kept}): {exc}"]
    for name, document in documents.items():
        write_one(document, rules_dir / name)
    return []


def prometheus_config(*, targets: dict[str, int], alertmanager_port: int | None,
                      rules_dir: Path, interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """One scrape job per service (``job`` is the service's name), the rules, Alertmanager."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"platform": "aicloud-local"}},
        "rule_files": [str(rules_dir / "*.yml")],
        "scrape_configs": [{"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                           for name, port in targets.items()],
    }
    if alertmanager_port is not None:
        config["alerting"] = {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]}
    return config


def alertmanager_config(*, webhook_url: str, token_file: Path, group_wait: str = "1s",
                        group_interval: str = "10s", repeat_interval: str = "1h") -> dict[str, Any]:
    """Everything to the collector's webhook, resolved alerts too. A laptop groups for a second
    (production: 30 s), so a page reaches the bus within seconds of firing."""
    return {
        "route": {"receiver": "aicloud-collector", "group_by": ["alertname", "slo", "endpoint"],
                  "group_wait": group_wait, "group_interval": group_interval,
                  "repeat_interval": repeat_interval},
        "receivers": [{"name": "aicloud-collector", "webhook_configs": [{
            "url": webhook_url, "send_resolved": True, "max_alerts": 0,
            "http_config": {"authorization": {"type": "Bearer",
                                              "credentials_file": str(token_file)}}}]}],
    }


def write_yaml(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(document, sort_keys=False))
    tmp.replace(path)
    return path


def prometheus_argv(binary: str, *, config: Path, data: Path, port: int) -> list[str]:
    data.mkdir(parents=True, exist_ok=True)
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=30d"]


def alertmanager_argv(binary: str, *, config: Path, data: Path, port: int) -> list[str]:
    data.mkdir(parents=True, exist_ok=True)
    # no --cluster.listen-address: one Alertmanager, and no fixed gossip port (9094) that
    # a second stack on this machine would collide on
    return [binary, f"--config.file={config}", f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="]
