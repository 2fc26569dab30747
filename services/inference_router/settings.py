from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"


class RouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_INFERENCE_ROUTER_", extra="ignore",
                                      frozen=True, populate_by_name=True)

    service_name: str = "inference-router"
    http_port: Port = 8004
    routes_file: Path = Field(
        default=POLICY_DIR / "routes.yaml",
        validation_alias=AliasChoices("AICLOUD_ROUTER_CONFIG", "AICLOUD_INFERENCE_ROUTER_ROUTES_FILE"),
        description="Routes YAML (providers, model aliases); re-read when it changes.")
    price_book: Path = Field(default=POLICY_DIR / "pricebook.yaml")
    org_file: Path = Field(default=POLICY_DIR / "org.yaml", description="Teams, for demo keys.")
    quality_file: Path | None = Field(
        default=POLICY_DIR / "quality.yaml",
        description="What share of platform endpoints' answers is sampled for quality scoring.")
    admin_token: str = Field(default="", description="Bearer token for /admin; empty: admin API off.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_tokens_cap: int = Field(default=32_768, ge=1, description="Largest max_tokens accepted.")
    queue_timeout_s: float = Field(default=2.0, ge=0, le=60,
                                   description="How long a request over its rate waits before 429.")
    key_cache_ttl_s: float = Field(default=5.0, gt=0, le=300)
    lease_window_s: float = Field(default=0.05, gt=0, le=5)
    lease_ttl_s: float = Field(default=1.0, gt=0, le=60)
    reload_interval_s: float = Field(default=1.0, gt=0)
    wake_timeout_s: float = Field(
        default=60.0, gt=0, le=900,
        description="How long a request for a scaled-to-zero endpoint waits for it to start.")
    endpoint_timeout_s: float = Field(default=60.0, gt=0, le=600,
                                      description="Answer deadline of a platform endpoint replica.")
    socket_pool_size: int = Field(default=256, ge=1, le=4096,
                                  description="Keep-alive connections per replica Unix socket.")
    usage_spool: Path = Field(default=Path("inference-router-usage.spool"),
                              description="Where usage waits when NATS cannot take it.")
    demo_keys_file: Path | None = Field(
        default=None, description="Local stack only: seed a key per org team and write them here.")
