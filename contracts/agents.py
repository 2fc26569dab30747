"""Agents and sandboxes domain."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.envelope import Command, Event, subject


class CreateSandbox(Command):
    """Create a sandbox from a template."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "create")

    sandbox_id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    template: str = Field(default="python")
    ttl_s: int = Field(default=900, gt=0, le=86_400)


class SandboxCreated(Event):
    """A sandbox is ready for commands."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "created")

    sandbox_id: str
    template: str
    isolation: Literal["gvisor", "bubblewrap", "rlimits", "kubernetes"]


class SandboxDeleted(Event):
    """A sandbox is gone (deleted, expired or reaped)."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "deleted")

    sandbox_id: str
    reason: str


class ToolCalled(Event):
    """An agent run called a tool."""

    SUBJECT: ClassVar[str] = subject("agents", "tool_called")

    run_id: str
    tool: str
    sandbox_id: str | None = None
    duration_ms: float = Field(ge=0)
    status: Literal["ok", "error", "denied", "timeout"]
