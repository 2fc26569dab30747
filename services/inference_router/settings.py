from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_INFERENCE_ROUTER_", extra="ignore",
                                      frozen=True)

    service_name: str = "inference-router"
    http_port: Port = 8004
