"""A job waiting for its engine to start it (a Ray job queued for a node) heartbeats slower than
a running one: every heartbeat is a request to Temporal, and a burst of queued jobs heartbeating
every second cost the dev server more CPU than the jobs' own starts (bench/engine.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from contracts import JobRequested
from services.provisioner.jobs import activities as job_activities
from services.provisioner.jobs.activities import JobActivities, running_heartbeat_s, waiting_heartbeat_s
from workflows.job import RunInput

pytestmark = pytest.mark.unit


class FakeBus:
    async def publish(self, event: Any) -> None:
        pass


class DoneJob:
    async def placement(self) -> None:
        return None

    async def gpu_samples(self) -> list[Any]:
        return []

    async def wait(self) -> int:
        return 0

    async def stop(self, *, grace_period_s: float) -> int:
        return 0


class SlowStart:
    """A backend whose jobs wait ``start_s`` for a node before they run (and end at once)."""

    name = "slow"

    def __init__(self, start_s: float) -> None:
        self.start_s = start_s

    async def start(self, request: JobRequested, **_: Any) -> DoneJob:
        await asyncio.sleep(self.start_s)
        return DoneJob()


def request() -> JobRequested:
    return JobRequested(tenant="legal", source="test", correlation_id="j-1", job_id="j-1",
                        name="j-1", command=["true"])


async def heartbeats_while_starting(start_s: float, heartbeat_timeout: timedelta) -> int:
    env = ActivityEnvironment()
    env.info = env.info.__class__(**{**env.info.__dict__, "heartbeat_timeout": heartbeat_timeout})
    beats: list[float] = []
    env.on_heartbeat = lambda *_: beats.append(asyncio.get_running_loop().time())
    activities = JobActivities(bus=FakeBus(), backend=SlowStart(start_s))  # type: ignore[arg-type]
    result = await env.run(activities.run_job, RunInput(request=request(), grace_period_s=1))
    assert result.exit_code == 0
    return len(beats)


async def test_a_job_queued_for_a_node_heartbeats_slower_once_its_start_is_not_quick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_activities, "FAST_START_S", 0.4)
    monkeypatch.setattr(job_activities, "WAITING_HEARTBEAT_S", 1.0)
    # every 0.5 s for the first 0.4 s, then every 1 s: at 0, 0.5, 1.5 and 2.5 of a 3 s start,
    # and one while the started job is announced (every 0.5 s throughout would be 7)
    # a short heartbeat timeout keeps the waiting heartbeat well inside it: every 0.5 s
    slow, quick = await asyncio.gather(heartbeats_while_starting(3.0, timedelta(seconds=30)),
                                       heartbeats_while_starting(3.0, timedelta(seconds=1.5)))
    assert 4 <= slow <= 5, slow
    assert quick >= 7, quick


def test_the_waiting_heartbeat_stays_a_third_of_the_heartbeat_timeout() -> None:
    assert waiting_heartbeat_s(None) == job_activities.WAITING_HEARTBEAT_S
    assert waiting_heartbeat_s(30) == job_activities.WAITING_HEARTBEAT_S
    assert waiting_heartbeat_s(6) == 2.0
    assert waiting_heartbeat_s(0.3) == 0.5


class SlowTeardown:
    name = "slow"

    async def teardown(self, request: JobRequested) -> None:
        await asyncio.sleep(2.2)


async def test_a_slow_teardown_heartbeats_so_a_live_worker_is_not_taken_for_a_dead_one() -> None:
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    activities = JobActivities(bus=FakeBus(), backend=SlowTeardown())  # type: ignore[arg-type]
    await env.run(activities.teardown_job, request())
    assert len(beats) >= 3  # at 0, 1 and 2 s: inside any heartbeat timeout of 2 s or more


class Forever:
    """A running job that never ends by itself; ``stop`` records when it was asked to."""

    name = "forever"

    def __init__(self) -> None:
        self.stops: list[float] = []

    async def start(self, request: JobRequested, **_: Any) -> Forever:
        return self

    async def placement(self) -> None:
        return None

    async def gpu_samples(self) -> list[Any]:
        return []

    async def wait(self) -> int | None:
        await asyncio.sleep(0.1)
        return -15 if self.stops else None

    async def stop(self, *, grace_period_s: float) -> int:
        self.stops.append(time.time())
        await asyncio.sleep(0.2)
        return -15


async def test_a_run_stops_its_job_at_its_deadline_without_waiting_for_the_workflows_cancel() -> None:
    backend = Forever()
    activities = JobActivities(bus=FakeBus(), backend=backend)  # type: ignore[arg-type]
    deadline = time.time() + 0.6
    result = await ActivityEnvironment().run(
        activities.run_job, RunInput(request=request(), grace_period_s=1, stop_at_s=deadline))
    assert result.terminated and result.exit_code == -15
    assert len(backend.stops) == 1 and deadline <= backend.stops[0] < deadline + 0.5


def test_running_jobs_share_one_heartbeat_budget() -> None:
    assert running_heartbeat_s(1, 5.0) == 1.0
    assert running_heartbeat_s(30, 5.0) == 3.0
    assert running_heartbeat_s(200, 5.0) == 5.0  # never slower than the waiting heartbeat


async def test_many_running_jobs_heartbeat_less_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(job_activities, "RUNNING_HEARTBEATS_PER_S", 4.0)
    backend = Forever()
    activities = JobActivities(bus=FakeBus(), backend=backend)  # type: ignore[arg-type]
    beats: list[float] = []

    async def one() -> None:
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *_: beats.append(time.monotonic())
        await env.run(activities.run_job, RunInput(request=request(), grace_period_s=1,
                                                   stop_at_s=time.time() + 3))

    await asyncio.gather(*(one() for _ in range(20)))
    # 20 running for ~3 s at one a second each would be ~60 beats; the budget of 4 a second
    # (each job every 5 s) leaves the beats of starting and stopping
    running = [b for b in beats if beats[0] + 0.7 < b < beats[0] + 2.8]
    assert len(running) <= 4 * 2.1 + 20 * 0.2, len(running)
    assert len(backend.stops) == 20
