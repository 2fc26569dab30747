from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from guardrails import POLICY_DIR
from services.kit.settings import Port, ServiceSettings
from workflows.job import HEARTBEAT_TIMEOUT_S, TASK_QUEUE

DATASET_ROOT = Path(__file__).resolve().parents[2] / "examples" / "datasets"


class ProvisionerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AICLOUD_PROVISIONER_", extra="ignore", frozen=True)

    service_name: str = "provisioner"
    http_port: Port = 8002
    temporal_address: str = Field(description="Temporal frontend, e.g. 127.0.0.1:7233")
    temporal_namespace: str = "default"
    task_queue: str = TASK_QUEUE
    work_dir: str = Field(default=".aicloud/jobs", description="Where job workspaces live.")
    backend: str = Field(default="local", pattern="^(local|kubernetes|ray)$", description=(
        "local: sandboxed processes on this machine; ray: jobs on the Ray cluster at ray_address."))
    ray_address: str = Field(default="", validation_alias=AliasChoices(
        "AICLOUD_PROVISIONER_RAY_ADDRESS", "AICLOUD_RAY_ADDRESS"),
        description="The Ray cluster's dashboard (Jobs API), e.g. http://127.0.0.1:8265.")
    placement_timeout_s: float = Field(default=300, gt=0, description=(
        "How long a Ray job may wait for a node with its GPUs before it fails."))
    job_heartbeat_timeout_s: int = Field(default=HEARTBEAT_TIMEOUT_S, gt=0, description=(
        "How long a job's run may go without a heartbeat before Temporal runs it again: how "
        "soon the jobs of a hung or dead provisioner are noticed. Set for jobs started from now."))
    memory_limit_mb: int = Field(default=4096, gt=0, description="RLIMIT_AS for local jobs.")
    dataset_root: Path = Field(default=DATASET_ROOT,
                               description="Holds projects/<project>/datasets/<name>/ folders.")
    artifact_root: Path | None = Field(default=None, description="Artifact store (local backend).")
    sandbox_hidden_paths: list[Path] = Field(
        default_factory=list, description="More host paths jobs must not see (e.g. $AICLOUD_HOME).")
    isolation: str = Field(default="auto", pattern="^(auto|gvisor|bubblewrap|rlimits)$",
                           description="Sandbox for local jobs; auto picks the strongest available.")
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("AICLOUD_PROVISIONER_MLFLOW_TRACKING_URI",
                                                    "MLFLOW_TRACKING_URI"),
        description="The organisation's MLflow server: completed jobs' runs are copied there.")
    # endpoints
    serving_root: Path = Field(default=Path("/var/tmp/aicloud-serving"), description=(
        "Model-server replicas' socket folders (short: a Unix socket path has 107 bytes)."))
    hf_mirror: Path | None = Field(default=None, description=(
        "Offline Hugging Face mirror (<org>/<name>/ folders); the HF cache and packaged models "
        "are looked at too. Never downloads."))
    canary_window_s: int = Field(default=60, gt=0, description="Traffic window per canary verdict.")
    canary_min_requests: int = Field(default=20, gt=0)
    # notebooks
    notebook_root: Path = Field(default=Path("/var/tmp/aicloud-notebooks"),
                                description="Running notebooks' socket and work folders.")
    volume_root: Path = Field(default=Path(".aicloud/volumes"),
                              description="Teams' persistent volumes: notebooks are saved here.")
    notebook_proxy_host: str = "127.0.0.1"
    notebook_proxy_port: Port = Field(default=8890, description="Where developers open notebooks.")
    catalog_url: str = Field(default="", description="Checks team keys at the notebook proxy.")
    policy_dir: Path = Field(default=POLICY_DIR,
                             description="Holds products.yaml: a product bound to an engine runs there.")

    @model_validator(mode="after")
    def _ray_needs_an_address(self) -> "ProvisionerSettings":
        if self.backend == "ray" and not self.ray_address:
            raise ValueError("backend 'ray' needs the cluster's address: set AICLOUD_RAY_ADDRESS "
                             "(the dashboard's http://HOST:8265)")
        return self

    @field_validator("backend")
    @classmethod
    def _wired_backend(cls, value: str) -> str:
        if value == "kubernetes":  # refused rather than silently running jobs in this pod
            raise ValueError(
                "jobs on Kubernetes are not wired into JobWorkflow yet: the kubernetes backend "
                "builds and validates the Job and NetworkPolicy only; set it to 'local'")
        return value
