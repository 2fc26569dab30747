from pathlib import Path

from pydantic import Field, NonNegativeInt
from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"


class CostLedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_COST_LEDGER_", extra="ignore", frozen=True)

    service_name: str = "cost-ledger"
    http_port: Port = 8003
    price_book: Path = Field(default=POLICY_DIR / "pricebook.yaml")
    org_file: Path = Field(default=POLICY_DIR / "org.yaml", description="Teams the ledger knows.")
    admin_token: str = Field(default="", description="Bearer token for budgets and reversals.")
    pool_gpus: dict[str, NonNegativeInt] = Field(
        default_factory=dict,
        description='GPUs per type in the shared pool, for the idle line, e.g. {"h100-80gb": 16}.')
    batch: int = Field(default=5000, ge=1, le=20_000,
                       description="Events per fetch and ingest transaction (at most).")
    linger_s: float = Field(default=0.25, ge=0, le=5, description="Caught up, wait this long to "
                            "gather events into one transaction: a trickle of requests then costs "
                            "a few transactions a second, not one per request.")
