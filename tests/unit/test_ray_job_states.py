"""The Ray backend watches its jobs with one shared ``list_jobs`` per poll (JobStates), not one
request per job: a fake Jobs API counts the calls."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from services.provisioner.backends.ray import JobStates

pytestmark = pytest.mark.unit


class CountingApi:
    def __init__(self, jobs: dict[str, str]) -> None:
        self.jobs, self.listed, self.asked = jobs, 0, 0

    def list_jobs(self) -> list[Any]:
        self.listed += 1
        return [SimpleNamespace(submission_id=i, status=s) for i, s in self.jobs.items()]

    def get_job_info(self, job_id: str) -> Any:
        self.asked += 1
        if job_id not in self.jobs:
            raise RuntimeError(f"Job {job_id} does not exist")
        return SimpleNamespace(submission_id=job_id, status=self.jobs[job_id])

    def submit_job(self, **kwargs: Any) -> str:
        raise NotImplementedError

    def stop_job(self, job_id: str) -> bool:
        raise NotImplementedError


async def test_two_hundred_jobs_polled_at_once_cost_one_list_call() -> None:
    api = CountingApi({f"j-{n}": "RUNNING" for n in range(200)})
    states = JobStates(api, max_age_s=60)
    found = await asyncio.gather(*(states.get(f"j-{n}") for n in range(200)))
    assert {job.status for job in found} == {"RUNNING"}
    assert (api.listed, api.asked) == (1, 0)


async def test_a_job_submitted_after_the_read_is_asked_for_alone_and_a_missing_one_raises() -> None:
    api = CountingApi({"old": "SUCCEEDED"})
    states = JobStates(api, max_age_s=60)
    await states.get("old")
    api.jobs["new"] = "PENDING"
    assert (await states.get("new")).status == "PENDING" and api.asked == 1
    with pytest.raises(RuntimeError, match="does not exist"):
        await states.get("gone")


async def test_states_are_read_again_once_they_are_older_than_max_age() -> None:
    api = CountingApi({"j": "PENDING"})
    states = JobStates(api, max_age_s=0.05)
    await states.get("j")
    api.jobs["j"] = "RUNNING"
    await asyncio.sleep(0.06)
    assert (await states.get("j")).status == "RUNNING" and api.listed == 2


class SlowList(CountingApi):
    """A cluster whose list of jobs takes ``took`` seconds to read (a long history)."""

    def __init__(self, took: float) -> None:
        super().__init__({"j": "RUNNING"})
        self.took = took

    def list_jobs(self) -> list[Any]:
        time.sleep(self.took)
        return super().list_jobs()


async def test_a_slow_list_is_read_less_often_so_listing_takes_a_bounded_share_of_the_time() -> None:
    fast, slow = JobStates(SlowList(0.0)), JobStates(SlowList(0.1))
    await fast.refresh()
    await slow.refresh()
    assert fast.max_age_s == 0.4  # a short history: every 0.4 s, as before
    assert 1.0 <= slow.max_age_s < 5.0  # 0.1 s to read: no more than a tenth of the time
    api = SlowList(1.0)
    capped = JobStates(api)
    await capped.refresh()
    assert capped.max_age_s == 5.0  # never staler than 5 s, however long the history
    listed = api.listed
    await capped.get("j")
    assert api.listed == listed, "read again within its max age"
