"""The Ray job entrypoint (``ray_entry``): it starts lean (each job pays its imports on a node),
reads specs from older provisioners, and gives the job the environment it would get locally."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from contracts import JobRequested
from services.kit.sandbox import Isolation, available
from services.provisioner.backends.ray import entry_spec
from services.provisioner.backends.ray_entry import read_spec, run
from services.provisioner.backends.runtime import job_runtime

ROOT = Path(__file__).resolve().parents[2]
SHOW_ENV = ("import json, os; json.dump({k: v for k, v in os.environ.items() "
            "if k.startswith(('AICLOUD_', 'PATH', 'HOME'))}, open('env.json', 'w'))")


def request(**fields: object) -> JobRequested:
    return JobRequested(tenant="legal", job_id="lean", command=["python3", "-c", SHOW_ENV],
                        params={"lr": "0.1"}, **fields)  # type: ignore[arg-type]


def spec_for(tmp_path: Path, isolation: str, dataset: Path | None = None) -> dict[str, object]:
    workspace = tmp_path / "ws"
    workspace.mkdir(exist_ok=True)
    return dict(entry_spec(request(), submission_id="lean", container_id=f"aicloud-legal-lean-{isolation}",
                           workspace=workspace, dataset=dataset, memory_limit_mb=1024, egress=False,
                           isolation=isolation, grace_period_s=2, state_dir=str(tmp_path / "state")))


def test_the_entrypoint_imports_neither_pydantic_nor_the_contracts_nor_structlog() -> None:
    probe = ("import sys, services.provisioner.backends.ray_entry\n"
             "print(sorted({m.split('.')[0] for m in sys.modules}\n"
             "             & {'pydantic', 'contracts', 'structlog', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_spec_from_an_older_provisioner_is_read_as_the_new_one(tmp_path: Path) -> None:
    dataset = tmp_path / "data"
    new = spec_for(tmp_path, "auto", dataset)
    old = {"request": request().model_dump(mode="json"), **{k: new[k] for k in (
        "submission_id", "container_id", "workspace", "dataset", "memory_limit_mb", "egress", "isolation",
        "grace_period_s", "state_dir", "hidden")}}
    assert read_spec(json.dumps(old)) == new
    assert read_spec(json.dumps(new)) == new


@pytest.mark.parametrize("isolation", [i.value for i in available()])
def test_the_job_gets_its_environment_where_its_sandbox_shows_its_paths(
        tmp_path: Path, isolation: str) -> None:
    dataset = tmp_path / "data"
    dataset.mkdir()
    spec = spec_for(tmp_path, isolation, dataset)
    assert asyncio.run(run(spec)) == 0  # type: ignore[arg-type]
    env = json.loads((tmp_path / "ws" / "env.json").read_text())
    plain = isolation == Isolation.RLIMITS
    inside = (str(tmp_path / "ws"), str(dataset)) if plain else ("/workspace", "/data")
    assert (env["HOME"], env["AICLOUD_DATASET_DIR"]) == inside
    assert env["AICLOUD_OUTPUT_DIR"] == f"{inside[0]}/output"
    assert env["AICLOUD_PARAM_LR"] == "0.1"
    runtime = job_runtime()
    assert runtime is None or env["PATH"].startswith(f"{runtime / 'bin'}:")  # the node's own PATH
    placement = json.loads((tmp_path / "ws" / ".aicloud-placement.json").read_text())
    assert placement["isolation"] == isolation
