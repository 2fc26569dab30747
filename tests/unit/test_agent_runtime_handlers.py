"""The agent runtime's bus handler with in-memory sandbox records: no database, no sandbox."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest

from contracts import CreateSandbox, Envelope, SandboxDeleted
from services.agent_runtime.errors import RuntimeRefusal
from services.agent_runtime.handlers import on_create_sandbox
from services.kit.inbox import UnitOfWork

pytestmark = pytest.mark.unit


@dataclass
class Records:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def find(self, session: Any, *, team: str, sandbox_id: str) -> dict[str, Any] | None:
        row = self.rows.get(sandbox_id)
        return row if row is not None and row["team"] == team else None

    async def record_request(self, session: Any, *, sandbox_id: str, team: str, template: str,
                             requested_at: datetime, expires_at: datetime) -> bool:
        if sandbox_id in self.rows:
            return False
        self.rows[sandbox_id] = {"team": team, "template": template, "status": "pending"}
        return True

    async def record_deleted(self, session: Any, *, sandbox_id: str, reason: str) -> bool:
        self.rows[sandbox_id].update(status="deleted", reason=reason)
        return True


@dataclass
class Sandboxes:
    """Creates by recording the row, as the real one does; refuses a template it lacks."""

    records: Records
    created: list[str] = field(default_factory=list)

    async def create(self, *, team: str, template: str, ttl_s: int | None = None,
                     sandbox_id: str | None = None) -> None:
        if template != "python":
            raise RuntimeRefusal(f"no template {template!r}")
        assert sandbox_id is not None
        self.created.append(sandbox_id)
        self.records.rows[sandbox_id] = {"team": team, "template": template, "status": "running"}


@dataclass
class Outbox:
    sent: list[Envelope] = field(default_factory=list)

    async def add(self, session: Any, event: Envelope) -> None:
        self.sent.append(event)


@dataclass
class Uow:
    outbox: Outbox = field(default_factory=Outbox)
    session: Any = None


def command(template: str = "python") -> CreateSandbox:
    return CreateSandbox(tenant="legal", sandbox_id="sb-1", template=template, source="ci")


async def test_a_redelivered_create_command_makes_one_sandbox() -> None:
    records = Records()
    sandboxes, uow = Sandboxes(records), Uow()
    for _ in range(2):
        await on_create_sandbox(command(), cast(UnitOfWork, uow), sandboxes=sandboxes, records=records)
    assert sandboxes.created == ["sb-1"] and uow.outbox.sent == []


async def test_a_refused_sandbox_is_recorded_deleted_and_announced_with_the_reason() -> None:
    records = Records()
    sandboxes, uow = Sandboxes(records), Uow()
    await on_create_sandbox(command("cobol"), cast(UnitOfWork, uow), sandboxes=sandboxes, records=records)
    assert sandboxes.created == []
    row = records.rows["sb-1"]
    assert row["status"] == "deleted" and "no template 'cobol'" in row["reason"]
    [announced] = uow.outbox.sent
    assert isinstance(announced, SandboxDeleted) and announced.reason == "refused: no template 'cobol'"
