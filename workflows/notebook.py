"""NotebookWorkflow: start a Jupyter server in a sandbox, stop it when idle or at its hard cap.

Workflow id = notebook id. The provisioner's watcher reads Jupyter's own activity record
(``last_activity``, kernels busy) and signals it here, debounced; a busy kernel is activity.
Idle past the timeout, the hard cap, or the owner's ``stop``: the notebooks are saved to the
team's volume, the server stops, usage is recorded and ``notebooks.stopped`` says why. The
owner may ``extend`` the cap once. Long-lived: continues as new when Temporal suggests it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from contracts import Envelope, NotebookRequested, NotebookStarted, NotebookStopped
    from workflows.publish import TYPED_PUBLISH_PATCH, Publish


class NotebookState(BaseModel):
    request: NotebookRequested
    status: str = "starting"
    url: str = ""
    started_at_s: float = 0
    stops_at_s: float = 0
    last_activity_s: float = 0
    busy: bool = False
    extended: bool = False
    reason: str = ""
    saved: list[str] = Field(default_factory=list)


class NotebookActivity(BaseModel):
    at_s: float
    busy: bool = False


class ServerStarted(BaseModel):
    """What ``start_notebook`` answers: where the server is reachable, and since when."""

    url: str
    started_at_s: float


class NotebookStop(BaseModel):
    request: NotebookRequested
    started_at_s: float
    reason: str


SOURCE = "provisioner"
HEARTBEAT = timedelta(seconds=10)  # a provisioner that died mid-start or mid-save is noticed this soon
RETRY = RetryPolicy(maximum_attempts=20, maximum_interval=timedelta(seconds=10))


@workflow.defn(name="NotebookWorkflow")
class NotebookWorkflow:
    @workflow.init
    def __init__(self, state: NotebookState) -> None:
        self.s = state
        self._stop: str | None = None
        self._dirty = False

    @workflow.signal
    def activity(self, report: NotebookActivity) -> None:
        self.s.last_activity_s = max(self.s.last_activity_s, report.at_s)
        self.s.busy = report.busy
        self._dirty = True

    @workflow.signal
    def stop(self, reason: str) -> None:
        self._stop = reason or "stopped by its owner"
        self._dirty = True

    @workflow.signal
    def extend(self, extra_s: int) -> None:
        """Once per notebook; the API refuses a second extension before it gets here."""
        if not self.s.extended and extra_s > 0:
            self.s.extended = True
            self.s.stops_at_s += extra_s
            self._dirty = True

    @workflow.query
    def state(self) -> NotebookState:
        return self.s

    @workflow.run
    async def run(self, state: NotebookState) -> str:
        s = self.s
        if s.status == "starting":
            try:
                started = await workflow.execute_activity(
                    "start_notebook", s.request, result_type=ServerStarted,
                    start_to_close_timeout=timedelta(minutes=3), heartbeat_timeout=HEARTBEAT,
                    retry_policy=RetryPolicy(maximum_attempts=2))
            except ActivityError as exc:
                s.status, s.reason = "failed", f"the notebook could not start: {exc.cause or exc}"
                await self._emit(NotebookStopped(reason=s.reason, **self._ids()))
                return s.status
            s.status, s.url, s.started_at_s = "running", started.url, started.started_at_s
            s.last_activity_s = started.started_at_s
            s.stops_at_s = started.started_at_s + s.request.max_runtime_s
            await self._emit(NotebookStarted(
                url=s.url, idle_timeout_s=s.request.idle_timeout_s,
                stops_at=datetime.fromtimestamp(s.stops_at_s, UTC), **self._ids()))
        reason = await self._until_done()
        if reason is None:
            workflow.continue_as_new(s)
        saved = await workflow.execute_activity(
            "stop_notebook", NotebookStop(request=s.request, started_at_s=s.started_at_s, reason=reason),
            result_type=list[str], start_to_close_timeout=timedelta(minutes=5), heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(maximum_attempts=10))
        s.status, s.reason, s.saved = "stopped", reason, saved
        runtime = workflow.now().timestamp() - s.started_at_s
        await self._emit(NotebookStopped(reason=reason, saved=saved, runtime_s=round(runtime, 3),
                                         **self._ids()))
        return reason

    async def _until_done(self) -> str | None:
        """Why the notebook must stop now; None when the history should be continued as new."""
        s = self.s
        while True:
            self._dirty = False
            now = workflow.now().timestamp()
            if self._stop is not None:
                return self._stop
            if now >= s.stops_at_s:
                return "max_runtime"
            idle_at = s.last_activity_s + s.request.idle_timeout_s
            if not s.busy and now >= idle_at:
                return "idle"
            if workflow.info().is_continue_as_new_suggested():
                return None
            deadline = s.stops_at_s if s.busy else min(idle_at, s.stops_at_s)
            try:
                await workflow.wait_condition(lambda: self._dirty, timeout=max(0.05, deadline - now))
            except TimeoutError:
                pass

    def _ids(self) -> dict[str, Any]:
        """A new event's envelope: id and time the same on every replay."""
        request = self.s.request
        return {"event_id": workflow.uuid4(), "occurred_at": workflow.now(), "tenant": request.tenant,
                "source": SOURCE, "correlation_id": request.notebook_id,
                "notebook_id": request.notebook_id}

    async def _emit(self, event: Envelope) -> None:
        """Publish a contract event; runs started before the typed-publish patch keep their
        activity (``emit_notebook_event``), handed the same ``Publish``."""
        activity = "publish" if workflow.patched(TYPED_PUBLISH_PATCH) else "emit_notebook_event"
        await workflow.execute_activity(activity, Publish.of(event),
                                        start_to_close_timeout=timedelta(seconds=30), retry_policy=RETRY)
