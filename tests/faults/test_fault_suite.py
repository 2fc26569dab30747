"""System-wide faults, the fast subset (``bench/faults.py`` is the long one): one mixed workload
on the local stack (jobs of two teams, some cancelled, one in five past its max runtime; router
requests of two teams, streamed and not, one team over its rate limit) while components are
SIGKILLed one after the other and brought back with ``aicloud dev restart``; then SIGSTOP of the
provisioner for 12 s, past its activities' heartbeat timeouts (jobs 8 s here, 30 s by default;
endpoints and notebooks 10 s, though this workload starts neither).
Afterwards every count must add up (``harness.verdict``):

- every job reached exactly one terminal state (catalog) and one terminal event (the bus);
- quota holds no GPU for any of them;
- the ledger holds every usage and inference event on the bus exactly once, and its inference
  total equals the events' own costs;
- no job or sandbox process is left without its owner;
- the dead-letter stream is empty (nothing malformed was sent);
- every router request got an answer or a clean error (a refused connection while the router
  was down), none hung.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from tests.e2e.test_local_stack import aicloud, processes_under
from tests.faults import harness

pytestmark = pytest.mark.e2e
# the fast subset: the services that hold reservations, workflows and the bill, the data plane and
# the bus (bench/faults.py kills every component, PostgreSQL and Temporal included)
KILLED = ("quota", "provisioner", "cost-ledger", "inference-router", "nats")
# the provisioner's job heartbeat timeout (30 s by default): a hang past it need not last 30 s
JOB_HEARTBEAT_TIMEOUT_S = 8
HANG_S = 12  # > the jobs' heartbeat timeout, and > the endpoints' and notebooks' 10 s


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as env:
        # set for the whole module: `dev restart` starts the provisioner again with this environment
        env.setenv("AICLOUD_PROVISIONER_JOB_HEARTBEAT_TIMEOUT_S", str(JOB_HEARTBEAT_TIMEOUT_S))
        result = aicloud(home, "dev", "up", "--detach", "--free-ports")
        assert result.returncode == 0, result.stdout + result.stderr
        yield home
    aicloud(home, "dev", "down")
    for proc in processes_under(home):
        proc.kill()


@pytest.mark.timeout(600)
def test_a_mixed_workload_survives_each_component_killed_and_every_count_adds_up(home: Path) -> None:
    done = harness.run_round(home, KILLED, hang_s=HANG_S)
    assert done.failed == [], "every killed component came back"
    found = harness.verdict(home, done.work)
    print("\n" + found.report(done.faults))
    assert all(found.checks.values()), {**found.details, **found.figures}
    assert found.figures["jobs"] >= 10 and found.figures["router requests"] >= 50, "the workload ran"
    address = str(harness.components(home)["temporal"]["address"])
    assert asyncio.run(run_heartbeat_timeouts(address, list(done.work.jobs))) == {JOB_HEARTBEAT_TIMEOUT_S}, \
        "every job's run got the provisioner's heartbeat timeout, which the hang outlasted"


async def run_heartbeat_timeouts(address: str, jobs: list[str]) -> set[float]:
    """The heartbeat timeouts the jobs' workflows gave their runs, in seconds."""
    client = await Client.connect(address)
    found = set()
    for job_id in jobs:
        try:
            events = [e async for e in client.get_workflow_handle(job_id).fetch_history_events()]
        except RPCError as exc:  # cancelled or refused before the provisioner started it
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        found |= {e.activity_task_scheduled_event_attributes.heartbeat_timeout.ToTimedelta().total_seconds()
                  for e in events if e.HasField("activity_task_scheduled_event_attributes")
                  and e.activity_task_scheduled_event_attributes.activity_type.name == "run_job"}
    return found
