"""Endpoints domain: deployed model servers."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts.envelope import Event, subject

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


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
    url: str = Field(description="Base URL of the OpenAI-compatible server.")


class EndpointRetired(Event):
    """An endpoint version stopped serving; the router must stop routing to it."""

    SUBJECT: ClassVar[str] = subject("endpoints", "retired")

    endpoint: str = Field(pattern=NAME_PATTERN)
    version: str
    reason: str = ""
