"""The provisioner's capacity report (services/provisioner/capacity.py): the engine's GPUs by
type, published when they change, from a fake engine view and a fake bus."""

from __future__ import annotations

import pytest

from contracts import ClusterCapacityChanged
from services.provisioner.capacity import CapacityWatcher
from services.provisioner.cluster import ClusterView, NodeView, capacity_pools

pytestmark = pytest.mark.unit


def node(node_id: str, gpu_type: str, gpus: int, state: str = "ALIVE") -> NodeView:
    return NodeView(node_id=node_id, state=state, gpu_type=gpu_type, gpus=gpus, simulated=True)


def test_pools_count_gpus_of_live_nodes_and_remember_the_biggest_node_of_a_type_that_is_down() -> None:
    pools = capacity_pools([node("a", "h100-80gb", 8), node("b", "h100-80gb", 4),
                            node("c", "a100-80gb", 4, state="DEAD"),
                            NodeView(node_id="head", state="ALIVE")])
    by_type = {p.gpu_type: p for p in pools}
    assert set(by_type) == {"h100-80gb", "a100-80gb"}  # the head has no GPUs: no pool
    assert (by_type["h100-80gb"].total, by_type["h100-80gb"].largest_node,
            by_type["h100-80gb"].nodes_alive) == (12, 8, 2)
    assert (by_type["a100-80gb"].total, by_type["a100-80gb"].largest_node,
            by_type["a100-80gb"].nodes_alive) == (0, 4, 0)


async def test_a_report_goes_out_first_then_only_when_the_gpus_change() -> None:
    nodes = [node("a", "h100-80gb", 8), node("b", "a100-80gb", 4)]
    sent: list[ClusterCapacityChanged] = []

    async def view() -> ClusterView:
        return ClusterView(engine="ray", address="http://ray:8265", nodes=list(nodes))

    async def publish(event: ClusterCapacityChanged) -> None:
        sent.append(event)

    watcher = CapacityWatcher(view, publish, refresh_s=3600)
    await watcher.poll()
    await watcher.poll()
    assert len(sent) == 1 and sent[0].engine == "ray" and sent[0].tenant == "platform"
    nodes[1] = node("b", "a100-80gb", 4, state="DEAD")
    await watcher.poll()
    assert len(sent) == 2
    assert {p.gpu_type: p.total for p in sent[1].pools} == {"a100-80gb": 0, "h100-80gb": 8}
    assert sent[1].observed_at >= sent[0].observed_at


async def test_an_unchanged_report_is_sent_again_after_the_refresh_period() -> None:
    sent: list[ClusterCapacityChanged] = []

    async def view() -> ClusterView:
        return ClusterView(engine="ray", nodes=[node("a", "h100-80gb", 8)])

    async def publish(event: ClusterCapacityChanged) -> None:
        sent.append(event)

    watcher = CapacityWatcher(view, publish, refresh_s=0)
    await watcher.poll()
    await watcher.poll()
    assert len(sent) == 2


async def test_an_engine_that_does_not_answer_publishes_nothing() -> None:
    sent: list[ClusterCapacityChanged] = []

    async def view() -> ClusterView:
        raise OSError("connection refused")

    async def publish(event: ClusterCapacityChanged) -> None:
        sent.append(event)

    with pytest.raises(OSError):
        await CapacityWatcher(view, publish).poll()
    assert sent == []


async def test_an_engine_that_stops_answering_is_reported_once_and_again_when_it_is_back() -> None:
    sent: list[ClusterCapacityChanged] = []
    answering = [True]

    async def view() -> ClusterView:
        if not answering[0]:
            raise OSError("connection refused")
        return ClusterView(engine="ray", address="http://ray:8265", nodes=[node("a", "h100-80gb", 8)])

    async def publish(event: ClusterCapacityChanged) -> None:
        sent.append(event)

    watcher = CapacityWatcher(view, publish, refresh_s=3600)
    await watcher.poll()
    answering[0] = False
    for _ in range(3):
        with pytest.raises(OSError):
            await watcher.poll()
    assert [e.reachable for e in sent] == [True, False]
    assert sent[1].pools == sent[0].pools and sent[1].engine == "ray"  # the last pools kept
    answering[0] = True
    await watcher.poll()
    assert [e.reachable for e in sent] == [True, False, True]
