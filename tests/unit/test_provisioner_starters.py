"""The provisioner's starters (admissions -> workflow starts, commands -> signals) against an
in-memory stand-in for the Temporal client: no server, no database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

import pytest
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError

from contracts import BudgetExhausted, JobAdmitted, JobRequested, NotebookAdmitted, NotebookRequested
from services.kit.inbox import UnitOfWork
from services.kit.settings import load_settings
from services.provisioner.jobs import starter as jobs
from services.provisioner.notebooks import starter as notebooks
from services.provisioner.settings import ProvisionerSettings

pytestmark = pytest.mark.unit
UOW = cast(UnitOfWork, None)  # the starters write nothing transactional


@dataclass
class Execution:
    id: str
    team: str

    async def memo(self) -> dict[str, Any]:
        return {"team": self.team}


@dataclass
class FakeTemporal:
    """Remembers workflow starts and signals; a second start of one id fails as Temporal's does."""

    running: list[Execution] = field(default_factory=list)
    started: list[tuple[str, Any]] = field(default_factory=list)
    signals: list[tuple[str, str, tuple[Any, ...]]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    async def start_workflow(self, run: Any, arg: Any, *, id: str, memo: dict[str, Any], **_: Any) -> None:
        if any(started == id for started, _ in self.started):
            raise WorkflowAlreadyStartedError(id, "JobWorkflow")
        self.started.append((id, arg))
        self.running.append(Execution(id, memo["team"]))

    async def list_workflows(self, query: str) -> AsyncIterator[Execution]:
        self.queries.append(query)
        for execution in list(self.running):
            yield execution

    def get_workflow_handle_for(self, run: Any, workflow_id: str) -> Any:
        return self.get_workflow_handle(workflow_id)

    def get_workflow_handle(self, workflow_id: str) -> Any:
        fake = self

        class Handle:
            async def signal(self, name: Any, *args: Any) -> None:
                fake.signals.append((workflow_id, getattr(name, "__name__", name), args))
        return Handle()


def admitted(job_id: str, team: str = "legal") -> JobAdmitted:
    request = JobRequested(tenant=team, job_id=job_id, command=["python3", "train.py"], gpus=1)
    return JobAdmitted(tenant=team, job_id=job_id, request=request)


async def test_a_redelivered_admission_starts_the_job_once() -> None:
    temporal = FakeTemporal()
    client = cast(Client, temporal)
    for _ in range(2):
        await jobs.on_job_admitted(admitted("j-1"), UOW, client=client, task_queue="q")
    assert [job_id for job_id, _ in temporal.started] == ["j-1"]
    assert temporal.started[0][1].request.job_id == "j-1"


async def test_the_provisioners_job_heartbeat_timeout_reaches_the_jobs_it_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AICLOUD_PROVISIONER_NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("AICLOUD_PROVISIONER_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("AICLOUD_PROVISIONER_TEMPORAL_ADDRESS", "127.0.0.1:7233")
    monkeypatch.delenv("AICLOUD_PROVISIONER_JOB_HEARTBEAT_TIMEOUT_S", raising=False)
    assert load_settings(ProvisionerSettings).job_heartbeat_timeout_s == 30  # unset: JobInput's own
    monkeypatch.setenv("AICLOUD_PROVISIONER_JOB_HEARTBEAT_TIMEOUT_S", "8")
    settings = load_settings(ProvisionerSettings)
    temporal = FakeTemporal()
    await jobs.on_job_admitted(admitted("j-8"), UOW, client=cast(Client, temporal), task_queue="q",
                               heartbeat_timeout_s=settings.job_heartbeat_timeout_s)
    assert temporal.started[0][1].heartbeat_timeout_s == 8
    await jobs.on_job_admitted(admitted("j-30"), UOW, client=cast(Client, temporal), task_queue="q")
    assert temporal.started[1][1].heartbeat_timeout_s == 30


async def test_a_stop_budget_cancels_only_that_teams_running_jobs() -> None:
    temporal = FakeTemporal()
    client = cast(Client, temporal)
    for job_id, team in [("a-1", "legal"), ("b-1", "search"), ("a-2", "legal")]:
        await jobs.on_job_admitted(admitted(job_id, team), UOW, client=client, task_queue="q")
    exhausted = BudgetExhausted(tenant="legal", budget_id="b", period="2026-12", action="stop",
                                spent_usd=Decimal("101"), amount_usd=Decimal("100"))
    await jobs.on_budget_exhausted(exhausted, UOW, client=client, task_queue="q")
    assert [(w, s, a) for w, s, a in temporal.signals] == [
        ("a-1", "cancel", (jobs.BUDGET_EXHAUSTED,)), ("a-2", "cancel", (jobs.BUDGET_EXHAUSTED,))]
    assert "TaskQueue = 'q'" in temporal.queries[0]
    temporal.signals.clear()
    await jobs.on_budget_exhausted(exhausted.model_copy(update={"action": "notify"}), UOW, client=client,
                                   task_queue="q")
    assert temporal.signals == [], "a budget that only notifies stops nothing"


async def test_a_redelivered_notebook_admission_starts_one_notebook() -> None:
    temporal = FakeTemporal()
    request = NotebookRequested(tenant="legal", notebook_id="nb-1", idle_timeout_s=600, max_runtime_s=3600)
    event = NotebookAdmitted(tenant="legal", notebook_id="nb-1", request=request)
    for _ in range(2):
        await notebooks.on_notebook_admitted(event, UOW, client=cast(Client, temporal), task_queue="q")
    assert [notebook_id for notebook_id, _ in temporal.started] == ["nb-1"]
