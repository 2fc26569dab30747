from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings


class CostLedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_COST_LEDGER_", extra="ignore", frozen=True)

    service_name: str = "cost-ledger"
    http_port: Port = 8003
