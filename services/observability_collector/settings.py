from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from guardrails import POLICY_DIR
from services.kit.settings import Port, ServiceSettings


class CollectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_OBSERVABILITY_COLLECTOR_",
                                      extra="ignore", frozen=True)

    service_name: str = "observability-collector"
    http_port: Port = 8006
    alert_webhook_token: str = Field(
        default="", description="Bearer token Alertmanager's webhook sends (its credentials_file); "
        "empty: the webhook is off.")
    prometheus_url: str = Field(default="", description="Where SLO status is read, e.g. "
                                "http://prometheus:9090; empty: SLO status has no figures.")
    alertmanager_url: str = Field(default="", description="Read at start for what fires already.")
    slo_file: Path = Field(default=POLICY_DIR / "slos.yaml")
    quality_file: Path | None = Field(default=POLICY_DIR / "quality.yaml",
                                      description="The judge's rubric and model; empty: no judging.")
    router_url: str = Field(default="", description="Where the judge model is asked; empty: no judging.")
    judge_key: str = Field(default="", description="A router key of the platform team (it pays).")
    judge_keys_file: Path | None = Field(
        default=None, description="Local stack: the router's demo keys file, read for judge_team.")
    judge_team: str = "platform"
