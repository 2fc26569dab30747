"""Notebooks domain: interactive, cost-capped Jupyter servers."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts.envelope import Event, subject

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class NotebookRequested(Event):
    """A developer asked for a notebook."""

    SUBJECT: ClassVar[str] = subject("notebooks", "requested")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    gpus: int = Field(default=0, ge=0, le=8)
    idle_timeout_s: int = Field(default=3600, gt=0)


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


class NotebookStopped(Event):
    """A notebook was shut down (idle, cost cap or by its owner)."""

    SUBJECT: ClassVar[str] = subject("notebooks", "stopped")

    notebook_id: str = Field(pattern=NAME_PATTERN)
    reason: str
