from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_CATALOG_", extra="ignore", frozen=True)

    service_name: str = "catalog"
    http_port: Port = 8000
