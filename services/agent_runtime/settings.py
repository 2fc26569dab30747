from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings


class AgentRuntimeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_AGENT_RUNTIME_", extra="ignore",
                                      frozen=True)

    service_name: str = "agent-runtime"
    http_port: Port = 8005
