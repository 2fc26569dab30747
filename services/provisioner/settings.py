from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.kit.settings import Port, ServiceSettings
from workflows.job import TASK_QUEUE

DATASET_ROOT = Path(__file__).resolve().parents[2] / "examples" / "datasets"


class ProvisionerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_PROVISIONER_", extra="ignore", frozen=True)

    service_name: str = "provisioner"
    http_port: Port = 8002
    temporal_address: str = Field(description="Temporal frontend, e.g. 127.0.0.1:7233")
    temporal_namespace: str = "default"
    task_queue: str = TASK_QUEUE
    work_dir: str = Field(default=".aicloud/jobs", description="Where job workspaces live.")
    backend: str = Field(default="local", pattern="^(local|kubernetes)$")
    memory_limit_mb: int = Field(default=4096, gt=0, description="RLIMIT_AS for local jobs.")
    dataset_root: Path = Field(default=DATASET_ROOT,
                               description="Holds projects/<project>/datasets/<name>/ folders.")
    artifact_root: Path | None = Field(default=None, description="Artifact store (local backend).")
    sandbox_hidden_paths: list[Path] = Field(
        default_factory=list, description="More host paths jobs must not see (e.g. $AICLOUD_HOME).")
    isolation: str = Field(default="auto", pattern="^(auto|gvisor|bubblewrap|rlimits)$",
                           description="Sandbox for local jobs; auto picks the strongest available.")
