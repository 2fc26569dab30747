"""Jobs domain: fine-tuning, training and batch jobs."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from contracts.catalog import Product
from contracts.envelope import Command, Event, subject

JobType = Literal["fine-tune", "training", "batch-inference", "evaluation"]
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# A hyper-parameter reaches the job as the environment variable AICLOUD_PARAM_<KEY> (upper-cased):
# its key must make a valid variable name on every backend (no "=", no spaces, no dots).
PARAM_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
MAX_PARAMS = 64
ParamKey = Annotated[str, StringConstraints(pattern=PARAM_KEY_PATTERN)]
ParamValue = Annotated[str, StringConstraints(max_length=4096)]


class JobRequested(Event):
    """A developer (or an outside system) asked for a job to run."""

    SUBJECT: ClassVar[str] = subject("jobs", "requested")

    job_id: str = Field(pattern=ID_PATTERN, description="Unique job id, also its workflow id.")
    job_type: JobType = Field(default="training", description="Kind of job.")
    product: str = Field(default="cpu-small", description="Compute product from the catalog.")
    gpus: int = Field(default=0, ge=0, le=1024, description="Number of GPUs requested.")
    gpu_type: str | None = Field(
        default=None, pattern=ID_PATTERN,
        description="GPU type, one of the product's (e.g. h100-80gb); unset: the first of the "
                    "product's types the compute engine offers.")
    dataset: str | None = Field(default=None, description="Dataset path, e.g. projects/x/datasets/v2.")
    command: list[str] = Field(min_length=1, description="Command to run, argv style.")
    params: dict[ParamKey, ParamValue] = Field(
        default_factory=dict, max_length=MAX_PARAMS,
        description="Hyper-parameters, each given to the job as AICLOUD_PARAM_<KEY> (key upper-cased): "
                    "letters, digits and underscores, not starting with a digit, at most 64 of them.")
    max_runtime_s: int | None = Field(default=None, gt=0, description="Requested runtime cap.")
    image: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="Container image on the kubernetes backend, pinned by digest "
                    "(registry/name@sha256:<64 hex>) and with a passed scan attestation.")
    requested_by: str = Field(default="unknown", description="User or key that asked.")
    model_name: str | None = Field(
        default=None, pattern=ID_PATTERN,
        description="Register the job's output directory as a new version of this model.",
    )

    @field_validator("params")
    @classmethod
    def _params_stay_apart(cls, params: dict[str, str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        for key in params:
            if (other := seen.setdefault(key.upper(), key)) != key:
                raise ValueError(f"params {other!r} and {key!r} would both be AICLOUD_PARAM_{key.upper()}: "
                                 "keep one of them")
        return params


class JobAdmitted(Event):
    """Quota and policy admitted a job; the provisioner may start it."""

    SUBJECT: ClassVar[str] = subject("jobs", "admitted")

    job_id: str = Field(pattern=ID_PATTERN)
    request: JobRequested = Field(description="The request that was admitted, as received.")
    policy_ids: list[str] = Field(default_factory=list, description="Policies that permitted it.")
    reason: str = Field(default="", description="Human-readable reason for the decision.")
    product: Product | None = Field(default=None, description="The product it was admitted on.")
    gpu_type: str | None = Field(
        default=None, description="The GPU type quota reserved (the request's, or the product's "
                                  "first the engine offers); None for a job without GPUs.")


class JobRejected(Event):
    """Quota or policy refused a job."""

    SUBJECT: ClassVar[str] = subject("jobs", "rejected")

    job_id: str = Field(pattern=ID_PATTERN)
    policy_ids: list[str] = Field(default_factory=list, description="Policies that forbade it.")
    reason: str = Field(description="Human-readable reason, naming what to change.")


class JobQueued(Event):
    """Policies allow the job but the team's quota is in use: it waits, first in first out."""

    SUBJECT: ClassVar[str] = subject("jobs", "queued")

    job_id: str = Field(pattern=ID_PATTERN)
    position: int = Field(ge=1, description="Place in the team's queue (1 = next).")
    reason: str = Field(description="Why it waits, and for what.")


class JobProvisioning(Event):
    """The provisioner is preparing the job's workload (sandbox or Kubernetes Job)."""

    SUBJECT: ClassVar[str] = subject("jobs", "provisioning")

    job_id: str = Field(pattern=ID_PATTERN)


class Placement(BaseModel):
    """Where an engine placed a job's process: its node and the devices it was given."""

    model_config = ConfigDict(frozen=True)

    node_id: str | None = Field(default=None, description="The engine's id of the node.")
    host: str | None = Field(default=None, description="The node's host name.")
    gpu_ids: list[str] = Field(default_factory=list, description="CUDA_VISIBLE_DEVICES it got.")
    isolation: str | None = Field(default=None, description="Its sandbox there (gvisor, bwrap, rlimits).")


class JobStarted(Event):
    """The job's workload is running: its process was started in its sandbox (the job's
    status becomes ``running``)."""

    SUBJECT: ClassVar[str] = subject("jobs", "started")

    job_id: str = Field(pattern=ID_PATTERN)
    backend: str = Field(description="Compute backend that runs it (local, kubernetes, ray).")
    placement: Placement | None = Field(default=None, description="Where it runs, when the "
                                                                  "engine says (Ray).")


class Artifact(BaseModel):
    """One file a job produced, as stored in the artifact store."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Path relative to the job's output directory.")
    uri: str = Field(description="Where it is stored (file:// locally, s3:// in production).")
    sha256: str
    bytes: int = Field(ge=0)


class TrackingRun(BaseModel):
    """Where a job's experiment-tracking run was copied (the organisation's MLflow server)."""

    model_config = ConfigDict(frozen=True)

    uri: str = Field(description="The tracking server, without credentials.")
    experiment_id: str
    run_id: str


class JobCompleted(Event):
    """The job finished successfully."""

    SUBJECT: ClassVar[str] = subject("jobs", "completed")

    job_id: str = Field(pattern=ID_PATTERN)
    exit_code: int = 0
    duration_s: float = Field(ge=0)
    artifacts: list[str] = Field(default_factory=list, description="Artifact paths it produced.")
    metrics: dict[str, float] = Field(default_factory=dict)
    stored_artifacts: list[Artifact] = Field(default_factory=list)
    dataset_digest: str | None = Field(default=None, description="sha256 over the dataset's files.")
    code_digest: str | None = Field(default=None, description="sha256 over the command and its files.")
    logged_params: dict[str, str] = Field(
        default_factory=dict, description="Params the job logged itself (MLflow).")
    tracking: TrackingRun | None = Field(default=None, description="Its run on the MLflow server.")


class JobFailed(Event):
    """The job ended with an error."""

    SUBJECT: ClassVar[str] = subject("jobs", "failed")

    job_id: str = Field(pattern=ID_PATTERN)
    exit_code: int | None = None
    duration_s: float = Field(ge=0)
    reason: str


class JobTerminated(Event):
    """The platform stopped the job (timeout, cancel, budget)."""

    SUBJECT: ClassVar[str] = subject("jobs", "terminated")

    job_id: str = Field(pattern=ID_PATTERN)
    duration_s: float = Field(ge=0)
    reason: Literal["max_runtime", "cancelled", "budget_exhausted", "preempted"]


class CancelJob(Command):
    """Stop a running job."""

    SUBJECT: ClassVar[str] = subject("jobs", "cancel")

    job_id: str = Field(pattern=ID_PATTERN)
    reason: str = "cancelled"
