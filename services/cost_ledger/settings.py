from pydantic_settings import SettingsConfigDict

from services.kit.settings import ServiceSettings


class CostLedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_COST_LEDGER_", extra="ignore", frozen=True)

    service_name: str = "cost-ledger"
    http_port: int = 8003
