"""Endpoints domain: deployed model servers."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Command, Event, subject

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ServingKind = Literal["embeddings", "chat", "predict"]


class EndpointRequested(Event):
    """Someone asked to deploy a model version as an endpoint."""

    SUBJECT: ClassVar[str] = subject("endpoints", "requested")

    endpoint: str = Field(pattern=NAME_PATTERN, description="Endpoint name, also its workflow id.")
    model: str = Field(min_length=1, description="Registry model name or Hugging Face id.")
    version: str = Field(default="latest")
    gpus: int = Field(default=0, ge=0, le=64)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    canary_percent: int = Field(default=0, ge=0, le=100)
    model_source: Literal["registry", "huggingface"] = "registry"
    artifact_uri: str = Field(default="", description="Registry models: file:// or s3:// URI of the "
                              "version's artifacts folder; empty for Hugging Face models.")
    scale_to_zero: bool = True
    idle_s: int = Field(default=900, gt=0, description="Idle time before scaling to zero.")
    rpm_limit: int | None = Field(default=None, gt=0, description="Requests per minute per team.")
    tpm_limit: int | None = Field(default=None, gt=0, description="Tokens per minute per team.")


class EndpointAdmitted(Event):
    """Quota and policy admitted an endpoint."""

    SUBJECT: ClassVar[str] = subject("endpoints", "admitted")

    endpoint: str = Field(pattern=NAME_PATTERN)
    request: EndpointRequested
    reason: str = ""


class EndpointRejected(Event):
    """Quota or policy refused an endpoint."""

    SUBJECT: ClassVar[str] = subject("endpoints", "rejected")

    endpoint: str = Field(pattern=NAME_PATTERN)
    reason: str


class EndpointReady(Event):
    """An endpoint version is serving; the router may route to it."""

    SUBJECT: ClassVar[str] = subject("endpoints", "ready")

    endpoint: str = Field(pattern=NAME_PATTERN)
    model: str
    version: str
    url: str = Field(description="Base URL of the OpenAI-compatible server (``unix:PATH`` for a "
                     "replica on this host's Unix socket).")
    replicas: list[str] = Field(default_factory=list, description="Every replica's base URL; "
                                "the router spreads requests over them. Empty: use ``url``.")
    weight: int = Field(default=100, ge=0, le=100, description="Share of traffic (canary split).")
    kind: ServingKind = "chat"
    rpm_limit: int | None = None
    tpm_limit: int | None = None


class EndpointRetired(Event):
    """An endpoint version stopped serving; the router must stop routing to it."""

    SUBJECT: ClassVar[str] = subject("endpoints", "retired")

    endpoint: str = Field(pattern=NAME_PATTERN)
    version: str
    reason: str = ""


class EndpointScanned(Event):
    """The security gate's decision on a model version, before anything runs."""

    SUBJECT: ClassVar[str] = subject("endpoints", "scanned")

    endpoint: str = Field(pattern=NAME_PATTERN)
    model: str
    version: str
    allowed: bool
    format: str = Field(description="safetensors, onnx, json, pickle, ...")
    size_bytes: int = Field(ge=0)
    license: str = ""
    findings: list[str] = Field(default_factory=list)
    reason: str = ""


class EndpointScaledToZero(Event):
    """No replica runs; the router holds the next request and wakes the endpoint."""

    SUBJECT: ClassVar[str] = subject("endpoints", "scaled_to_zero")

    endpoint: str = Field(pattern=NAME_PATTERN)
    model: str
    kind: ServingKind = "chat"
    idle_s: float = 0


class EndpointCanaryDecided(Event):
    """Canary analysis promoted the new version or rolled it back, and why."""

    SUBJECT: ClassVar[str] = subject("endpoints", "canary_decided")

    endpoint: str = Field(pattern=NAME_PATTERN)
    stable: str
    canary: str
    outcome: Literal["promoted", "rolled_back"]
    reason: str
    stable_error_rate: float = 0
    canary_error_rate: float = 0
    stable_p95_ms: float = 0
    canary_p95_ms: float = 0


class EndpointFailed(Event):
    """The endpoint could not be deployed (scan refused, replicas never healthy, ...)."""

    SUBJECT: ClassVar[str] = subject("endpoints", "failed")

    endpoint: str = Field(pattern=NAME_PATTERN)
    version: str
    reason: str
    endpoint_gone: bool = Field(default=True, description="No version serves: whatever the "
                                "endpoint held is released. False when only a new version failed.")


class EndpointDeleted(Event):
    """The endpoint is gone: every replica stopped, every route removed, capacity released."""

    SUBJECT: ClassVar[str] = subject("endpoints", "deleted")

    endpoint: str = Field(pattern=NAME_PATTERN)
    reason: str = "deleted"


class WakeEndpoint(Command):
    """Start a replica of a scaled-to-zero endpoint now (the router holds a request for it)."""

    SUBJECT: ClassVar[str] = subject("endpoints", "wake")

    endpoint: str = Field(pattern=NAME_PATTERN)


class RollbackEndpoint(Command):
    """Send all traffic back to the stable version and stop the canary."""

    SUBJECT: ClassVar[str] = subject("endpoints", "rollback")

    endpoint: str = Field(pattern=NAME_PATTERN)
    reason: str = "rolled back by its owner"


class DeleteEndpoint(Command):
    """Stop every replica of an endpoint and forget its routes."""

    SUBJECT: ClassVar[str] = subject("endpoints", "delete")

    endpoint: str = Field(pattern=NAME_PATTERN)
