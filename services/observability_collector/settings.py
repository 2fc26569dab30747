from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings


class CollectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_OBSERVABILITY_COLLECTOR_",
                                      extra="ignore", frozen=True)

    service_name: str = "observability-collector"
    http_port: Port = 8006
