from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings

POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"


class CatalogSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_CATALOG_", extra="ignore", frozen=True)

    service_name: str = "catalog"
    http_port: Port = 8000
    policy_dir: Path = Field(default=POLICY_DIR, description="Folder with products.yaml and org.yaml.")
    demo_keys_file: Path | None = Field(
        default=None, description="Local stack only: seed a key per org team and write them here."
    )
    provisioner_url: str = Field(default="", description="Where job logs are read from.")
    ledger_url: str = Field(default="", description="Where a team's bill is read from.")
