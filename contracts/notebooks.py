"""Notebooks domain: interactive, cost-capped Jupyter servers."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from pydantic import Field

from contracts.envelope import Command, Event, subject

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class NotebookRequested(Event):
    """A developer asked for a notebook."""

    SUBJECT: ClassVar[str] = subject("notebooks", "requested")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    gpus: int = Field(default=0, ge=0, le=8)
    idle_timeout_s: int = Field(default=3600, gt=0)
    product: str = "notebook"
    max_runtime_s: int = Field(default=43200, gt=0, description="Hard cap from the product.")
    gpu_type: str | None = None


class NotebookAdmitted(Event):
    """Quota and policy admitted a notebook."""

    SUBJECT: ClassVar[str] = subject("notebooks", "admitted")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    request: NotebookRequested
    reason: str = ""


class NotebookRejected(Event):
    """Quota or policy refused a notebook."""

    SUBJECT: ClassVar[str] = subject("notebooks", "rejected")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    reason: str


class NotebookStarted(Event):
    """The notebook's Jupyter server answers behind the platform's proxy."""

    SUBJECT: ClassVar[str] = subject("notebooks", "started")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    url: str = Field(description="Where the owner opens it (the proxy; needs the team's key).")
    idle_timeout_s: int
    stops_at: datetime = Field(description="The hard cap, unless extended.")


class NotebookStopped(Event):
    """A notebook was shut down (idle, cost cap or by its owner)."""

    SUBJECT: ClassVar[str] = subject("notebooks", "stopped")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    reason: str
    saved: list[str] = Field(default_factory=list, description="Notebook files kept on the team's "
                             "persistent volume.")
    runtime_s: float = Field(default=0, ge=0)


class StopNotebook(Command):
    """Save and stop a notebook now."""

    SUBJECT: ClassVar[str] = subject("notebooks", "stop")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    reason: str = "stopped by its owner"


class ExtendNotebook(Command):
    """Push the notebook's hard cap out once, within policy."""

    SUBJECT: ClassVar[str] = subject("notebooks", "extend")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    extra_s: int = Field(gt=0, le=4 * 3600)
