from pathlib import Path

from pydantic import Field, NonNegativeFloat, NonNegativeInt
from pydantic_settings import SettingsConfigDict

from guardrails import POLICY_DIR
from services.kit.settings import Port, ServiceSettings


class QuotaSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_QUOTA_", extra="ignore", frozen=True)

    service_name: str = "quota"
    http_port: Port = 8001
    default_gpu_quota: int = Field(default=8, ge=0, description="GPUs a team may hold at once.")
    team_gpu_quotas: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description='Per-team overrides as JSON, e.g. {"legal": 16}.'
    )
    node_gpus: int | None = Field(
        default=None, ge=0,
        description="GPUs of the local node (simulated capacity shared by all teams); unset: no limit.")
    team_budgets_usd: dict[str, NonNegativeFloat] = Field(
        default_factory=dict, description='Monthly budget per team as JSON, e.g. {"legal": 500}.')
    policy_dir: Path = Field(default=POLICY_DIR, description="Folder of *.cedar, products.yaml, org.yaml.")
    backend: str = Field(default="local", pattern="^(local|kubernetes)$")
