"""The facts workflows handed their ``emit_*_event`` activities before they built contract
events themselves (``workflows.publish``). Nothing new is built from these: they are kept so
that an activity scheduled with one before an upgrade, and retried after it, is still read and
published (``services/provisioner/legacy.py``). Remove them once no workflow started before
the ``typed-publish`` patch is running or kept in retention."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from contracts import JobRequested, NotebookRequested
from workflows.endpoint_model import CanaryVerdict
from workflows.job_events import JobOutputs


class EmitInput(BaseModel):
    """A job's lifecycle fact."""

    kind: Literal["provisioning", "started", "completed", "failed", "terminated", "usage"]
    request: JobRequested
    event_id: str
    backend: str = ""
    exit_code: int | None = None
    started_at_s: float = 0.0
    ended_at_s: float = 0.0
    reason: str = ""
    outputs: JobOutputs | None = None
    gpu_type: str | None = None
    price_class: str = "on-demand"


class EndpointFact(BaseModel):
    """An endpoint's lifecycle fact."""

    kind: Literal["ready", "scaled_to_zero", "retired", "failed", "deleted", "canary_decided"]
    endpoint: str
    team: str
    event_id: str
    version: str = ""
    model: str = ""
    serving: str = "chat"
    url: str = ""
    replicas: list[str] = Field(default_factory=list)
    weight: int = 100
    reason: str = ""
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    verdict: CanaryVerdict | None = None
    stable: str = ""
    idle_s: float = 0
    gone: bool = False


class NotebookFact(BaseModel):
    """A notebook's lifecycle fact."""

    kind: Literal["started", "stopped"]
    request: NotebookRequested
    event_id: str
    url: str = ""
    stops_at_s: float = 0
    reason: str = ""
    saved: list[str] = Field(default_factory=list)
    runtime_s: float = 0
