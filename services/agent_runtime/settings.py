from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"


class AgentRuntimeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_AGENT_RUNTIME_", extra="ignore",
                                      frozen=True)

    service_name: str = "agent-runtime"
    http_port: Port = 8005
    templates: Path = Field(default=POLICY_DIR / "sandbox-templates.yaml",
                            description="Sandbox templates YAML (interpreter, packages, limits, pool).")
    sandbox_dir: Path = Field(
        default=Path("/var/tmp/aicloud-sandboxes"),
        description="Sandbox state: control sockets, gVisor bundles, template packages. Must be "
                    "traversable by the sandboxes' uids (so not under a private home folder).")
    template_cache: Path = Field(default=Path("/var/tmp/aicloud-templates"),
                                 description="Templates' installed packages, shared by every runtime here.")
    isolation: str = Field(default="auto", pattern="^(auto|gvisor|bubblewrap|rlimits)$")
    sandbox_hidden_paths: list[Path] = Field(
        default_factory=list, description="Host folders masked with an empty tmpfs inside sandboxes.")
    max_sandboxes_per_team: int = Field(default=20, ge=1, le=10_000)
    max_file_bytes: int = Field(default=10 << 20, ge=1024, le=1 << 30)
    pools: bool = Field(default=True, description="Keep warm pools (templates' `pool` sizes).")
    catalog_url: str = Field(default="", description="Catalog base URL: team API keys are checked there.")
    key_cache_ttl_s: float = Field(default=30.0, gt=0, le=3600)
    state_master_keys: str = Field(
        default="", description='Master keys for the state store, JSON {"id": "<base64 of 32 bytes>"}; '
                                "empty: the state API is off.")
    state_master_keys_file: Path | None = Field(default=None, description="Or: a file holding that JSON.")
    state_active_key: str = Field(default="", description="The master key id that wraps new data keys.")
    admin_token: str = Field(default="", description="Bearer token for /admin; empty: admin API off.")
    state_sweep_interval_s: float = Field(default=60.0, gt=0, le=86_400)
    temporal_address: str = Field(default="", description="Temporal frontend; empty: agent runs are off.")
    temporal_namespace: str = "default"
    task_queue: str = "aicloud-agents"
    router_url: str = Field(default="", description="The inference router agents' LLM calls go through.")
    router_keys_file: Path | None = Field(default=None, description='JSON {"team": "vk_..."}: each '
                                                                     "team's router key for its agents.")
    price_book: Path = Field(default=POLICY_DIR / "pricebook.yaml", description="For max_cost.")
