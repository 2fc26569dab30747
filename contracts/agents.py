"""Agents and sandboxes domain."""

from __future__ import annotations

from datetime import datetime
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
    pooled: bool = Field(default=False, description="Handed over from the warm pool.")
    ready_ms: float | None = Field(default=None, ge=0, description="Create request to ready.")
    expires_at: datetime | None = None


class SandboxDeleted(Event):
    """A sandbox is gone (deleted, expired or reaped)."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "deleted")

    sandbox_id: str
    reason: str = Field(description="deleted, expired, idle, lifetime, died, runtime_restarted, ...")


class ToolCalled(Event):
    """An agent run called a tool."""

    SUBJECT: ClassVar[str] = subject("agents", "tool_called")

    run_id: str
    tool: str
    sandbox_id: str | None = None
    duration_ms: float = Field(ge=0)
    status: Literal["ok", "error", "denied", "timeout"]
    step: int | None = Field(default=None, ge=0, description="The run's step that made the call.")
    agent: str | None = None
    exit_code: int | None = None
    limit: str | None = Field(default=None, description="The sandbox limit that ended the tool.")


class SandboxCommandFinished(Event):
    """A command run in a sandbox ended; ``limit`` names the limit that ended it, if one did."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "command_finished")

    sandbox_id: str
    command: str = Field(description="The program run (argv[0]); arguments are not published.")
    exit_code: int
    limit: str | None = None
    duration_ms: float = Field(ge=0)


class SandboxEgress(Event):
    """A sandbox asked to connect out through the egress proxy, and the decision."""

    SUBJECT: ClassVar[str] = subject("sandboxes", "egress")

    sandbox_id: str
    host: str
    port: int = Field(ge=0, le=65535)
    allowed: bool


class AgentRunStarted(Event):
    """An agent run began."""

    SUBJECT: ClassVar[str] = subject("agents", "run_started")

    run_id: str
    agent: str
    model: str
    max_steps: int = Field(ge=1)
    max_cost_usd: float = Field(ge=0)


class AgentRunFinished(Event):
    """An agent run ended; ``reason`` says why (answered, max_steps, max_cost, ...)."""

    SUBJECT: ClassVar[str] = subject("agents", "run_finished")

    run_id: str
    agent: str
    status: Literal["succeeded", "failed", "stopped"]
    reason: str
    steps: int = Field(ge=0)
    cost_usd: float = Field(ge=0)
