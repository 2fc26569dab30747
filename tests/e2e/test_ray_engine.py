"""The local platform with `--engine ray`: a real Ray cluster (a head and two worker nodes with
simulated GPUs) runs the jobs; the golden path's job trains, registers its model with lineage,
and `dev down` leaves no Ray process behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from ray.job_submission import JobSubmissionClient

from aicloud.local.ray_cluster import NodeSpec, RayCluster, crash, node_session
from tests.e2e.test_local_stack import ROOT, aicloud, processes_under

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, dict[str, object]]]]:
    home = tmp_path_factory.mktemp("ray-stack")
    result = aicloud(home, "dev", "up", "--detach", "--free-ports", "--engine", "ray", timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    components = {row["name"]: row for row in json.loads(aicloud(home, "dev", "status", "--json").stdout)}
    yield home, components
    aicloud(home, "dev", "down")


def ray_processes(gcs_address: str) -> list[psutil.Process]:
    port = gcs_address.rsplit(":", 1)[1]
    marker = f"aicloud-ray-{port}"
    return [p for p in psutil.process_iter(["cmdline"])
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE]


def test_the_cluster_shows_its_nodes_and_gpus_by_type(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    assert components["ray"]["healthy"] is True
    view = json.loads(aicloud(home, "cluster", "-o", "json").stdout)
    assert view["engine"] == "ray" and view["address"] == components["ray"]["url"]
    pools = {pool["gpu_type"]: pool for pool in view["gpus"]}
    assert {t: p["total"] for t, p in pools.items()} == {"a100-80gb": 4, "h100-80gb": 8}
    assert all(node["simulated"] for node in view["nodes"] if node["gpus"])
    table = aicloud(home, "cluster")
    assert table.returncode == 0 and "h100-80gb (simulated)" in table.stdout


def test_the_golden_path_job_runs_on_ray_and_registers_its_model(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    result = aicloud(home, "create", "job", "--type", "fine-tune", "--gpus", "2", "--name", "ray-train",
                     "--dataset", "projects/legal-rag/datasets/v2", "--model-name", "clause-risk",
                     "--param", "epochs=3", "--wait", "-o", "json", "--",
                     "python3", str(ROOT / "examples" / "train.py"), timeout=300)
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed" and job["result"]["model"] == {"name": "clause-risk", "version": 1}
    workspace = home / "jobs" / "legal" / "ray-train"
    assert "epoch 3/3" in (workspace / "job.log").read_text()
    placement = json.loads((workspace / ".aicloud-placement.json").read_text())
    assert len(placement["gpu_ids"]) == 2
    ray = JobSubmissionClient(str(components["ray"]["url"]))
    info = ray.get_job_info("ray-train")
    assert info.status.value == "SUCCEEDED" and info.metadata["aicloud.team"] == "legal"
    model = json.loads(aicloud(home, "models", "get", "clause-risk", "-o", "json").stdout)
    [version] = model["versions"]
    assert version["lineage"]["job"]["id"] == "ray-train"
    assert version["lineage"]["dataset"]["path"] == "projects/legal-rag/datasets/v2"


def test_a_request_no_node_can_hold_is_refused_at_once_and_an_admitted_job_says_where_it_runs(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    started = time.monotonic()
    refused = aicloud(home, "create", "job", "--gpus", "16", "--gpu-type", "h100-80gb", "--name",
                      "too-big", "-o", "json", "--", "python3", "-c", "print(1)")
    took = time.monotonic() - started  # the CLI's own start included: said, not asserted on
    assert refused.returncode == 1, refused.stdout + refused.stderr
    job = json.loads(refused.stdout)
    assert job["status"] == "rejected" and "manager approval" in job["reason"]
    assert "the largest h100-80gb node of the ray cluster has 8 GPUs" in job["reason"], (job, took)
    wrong = aicloud(home, "create", "job", "--gpus", "1", "--gpu-type", "l4-24gb", "--", "true")
    assert wrong.returncode != 0
    assert "offers GPU types a100-80gb, h100-80gb, not l4-24gb" in " ".join(wrong.stderr.split())
    placed = aicloud(home, "create", "job", "--gpus", "2", "--gpu-type", "h100-80gb", "--name", "placed",
                     "--wait", "-o", "json", "--", "python3", "-c", "import time; time.sleep(2)", timeout=300)
    assert placed.returncode == 0, placed.stderr
    where = json.loads(aicloud(home, "jobs", "get", "placed", "-o", "json").stdout)["result"]["placement"]
    assert where["node_id"] and len(where["gpu_ids"]) == 2 and where["isolation"]
    table = aicloud(home, "jobs", "get", "placed")
    assert f"placed on node {where['node_id'][:12]}" in table.stdout and "GPUs " in table.stdout


def test_a_lost_node_is_a_preemption_and_the_job_resumes_on_a_node_that_joined(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    gcs, dashboard = str(components["ray"]["address"]), str(components["ray"]["url"])
    spare = RayCluster(root=home / "spare-node", nodes=(), gcs_port=int(gcs.rsplit(":", 1)[1]),
                       dashboard_port=int(dashboard.rsplit(":", 1)[1]))
    try:
        spare_id = spare.add_node(NodeSpec("a100-spare", gpus=4, gpu_type="a100-80gb"))  # joins
        deadline = time.monotonic() + 60
        while True:  # the cluster, and then quota, hear of it
            shown = aicloud(home, "cluster", "-o", "json")
            view = json.loads(shown.stdout) if shown.returncode == 0 else {"gpus": [], "error": shown.stderr}
            if {p["gpu_type"]: p["total"] for p in view["gpus"]}.get("a100-80gb") == 8:
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.5)
        time.sleep(3)  # the provisioner reports every 2 s
        probes = [aicloud(home, "create", "job", "--gpus", "4", "--gpu-type", "a100-80gb", "--name",
                          f"probe-{n}", "-o", "json", "--", "python3", "-c", "import time; time.sleep(600)")
                  for n in range(2)]
        # two 4-GPU jobs fit the 8 a100s of two nodes; with one node the second would queue
        # (create returns once quota has decided; by the time it prints, an admitted job may be further on)
        placed = {"admitted", "provisioning", "running"}
        assert all(json.loads(p.stdout)["status"] in placed for p in probes), probes
        for n in range(2):
            aicloud(home, "jobs", "cancel", f"probe-{n}")
            aicloud(home, "jobs", "wait", f"probe-{n}", timeout=120)

        submitted = aicloud(home, "create", "job", "--type", "fine-tune", "--gpus", "2", "--gpu-type",
                            "a100-80gb", "--name", "lost-node", "--dataset", "projects/legal-rag/datasets/v2",
                            "--param", "epochs=60", "--param", "epoch_pause=0.2", "--", "python3",
                            str(ROOT / "examples" / "train.py"))
        assert submitted.returncode == 0, submitted.stderr
        checkpoint = home / "jobs" / "legal" / "lost-node" / "checkpoints" / "checkpoint.json"
        deadline = time.monotonic() + 120
        while not checkpoint.exists() or json.loads(checkpoint.read_text())["epoch"] < 3:
            assert time.monotonic() < deadline, aicloud(home, "jobs", "get", "lost-node").stdout
            time.sleep(0.2)
        first = json.loads(aicloud(home, "jobs", "get", "lost-node", "-o", "json").stdout)
        ran_on = first["result"]["placement"]["node_id"]
        if ran_on == spare_id:  # a machine dies: whichever the job runs on
            spare.kill_node("a100-spare")
        else:
            crash(node_session(gcs, "a100-80gb", besides=spare))
        done = aicloud(home, "jobs", "wait", "lost-node", "-o", "json", timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        job = json.loads(done.stdout)
        log = (home / "jobs" / "legal" / "lost-node" / "job.log").read_text()
        assert int(log.split("resuming from checkpoint at epoch ")[1].split()[0]) >= 3
        assert log.count("epoch 60/60") == 1  # the lost run died with its node: one writer
        assert job["result"]["placement"]["node_id"] != ran_on
    finally:
        spare.stop()


def test_down_leaves_no_ray_process_behind(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    gcs = str(components["ray"]["address"])
    assert ray_processes(gcs), "the cluster's processes carry its temp folder"
    down = aicloud(home, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert ray_processes(gcs) == [] and processes_under(home) == []
