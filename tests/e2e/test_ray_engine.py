"""The local platform with `--engine ray`: a real Ray cluster (a head and two worker nodes with
simulated GPUs) runs the jobs; the golden path's job trains, registers its model with lineage,
and `dev down` leaves no Ray process behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from ray.job_submission import JobSubmissionClient

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


def test_down_leaves_no_ray_process_behind(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    gcs = str(components["ray"]["address"])
    assert ray_processes(gcs), "the cluster's processes carry its temp folder"
    down = aicloud(home, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert ray_processes(gcs) == [] and processes_under(home) == []
