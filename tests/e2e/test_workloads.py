"""Endpoints and notebooks on the whole local platform, through the CLI and the router: a
packaged Hugging Face model and a job's model deployed, served with real outputs, scaled to
zero and back, canaried with an automatic rollback, refused when unsafe; a notebook behind
the proxy that stops itself when idle."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from aicloud.demo_endpoints import cosine
from aicloud.local.stack import Stack
from services.provisioner.endpoints.serving.replica import CONTAINER_PREFIX
from tests.e2e.test_local_stack import ROOT, aicloud, processes_under

pytestmark = pytest.mark.e2e
Running = tuple[Path, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("workloads")
    result = aicloud(home, "dev", "up", "--detach", "--free-ports")
    assert result.returncode == 0, result.stdout + result.stderr
    components = {row["name"]: row for row in json.loads(aicloud(home, "dev", "status", "--json").stdout)}
    yield home, components
    aicloud(home, "dev", "down")
    for proc in processes_under(home):
        proc.kill()


def router(stack: Running, team: str = "legal") -> httpx.Client:
    home, components = stack
    key = json.loads((home / "router-keys.json").read_text())[team]
    return httpx.Client(
        base_url=str(components["inference-router"]["url"]),
        timeout=60,
        headers={"authorization": f"Bearer {key}"},
    )


MINILM = ("--hf-model", "sentence-transformers/all-MiniLM-L6-v2")


def deploy(home: Path, name: str, *args: str) -> dict[str, Any]:
    """`aicloud deploy model --name NAME ARGS -o json`, which must succeed; the endpoint."""
    result = aicloud(home, "deploy", "model", "--name", name, *args, "-o", "json", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(json.loads(result.stdout))


def replicas_of(home: Path, endpoint: str) -> dict[str, list[psutil.Process]]:
    """The endpoint's replicas running on this machine, by replica id, with their processes:
    bubblewrap's name the replica's folder, gVisor's its container."""
    root = str(Stack(home).scratch_dir("serving")) + "/"
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info["cmdline"] or ():
            if arg.startswith(root):
                replica_id = arg.removeprefix(root).split("/")[0]
            elif arg.rpartition("/")[2].startswith(CONTAINER_PREFIX):
                replica_id = arg.rpartition("/")[2].removeprefix(CONTAINER_PREFIX)
            else:
                continue
            if replica_id.startswith(endpoint + "-"):
                found.setdefault(replica_id, []).append(proc)
                break
    return found


def test_a_packaged_hugging_face_model_serves_scales_to_zero_and_back(stack: Running) -> None:
    home, _ = stack
    endpoint = deploy(home, "embedder", *MINILM, "--idle-timeout", "8")
    assert endpoint["status"] == "ready" and endpoint["kind"] == "embeddings"
    assert endpoint["scan"]["license"] == "apache-2.0" and endpoint["scan"]["allowed"] is True
    assert endpoint["scan"]["format"] == "safetensors", endpoint["scan"]
    with router(stack) as http:
        texts = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
        answer = http.post("/v1/embeddings", json={"model": "embedder", "input": texts})
        assert answer.status_code == 200, answer.text
        vectors = [d["embedding"] for d in answer.json()["data"]]
        assert len(vectors[0]) == 384 and answer.json()["usage"]["prompt_tokens"] > 0
        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
        assert len(replicas_of(home, "embedder")) == 1
        # idle 8 s -> scaled to zero: no replica process left
        deadline = time.monotonic() + 40
        while (
            json.loads(aicloud(home, "endpoints", "get", "embedder", "-o", "json").stdout)["status"]
            != "scaled_to_zero"
        ):
            assert time.monotonic() < deadline, "never scaled to zero"
            time.sleep(0.5)
        time.sleep(1)
        assert replicas_of(home, "embedder") == {}
        # the router holds the next request, wakes the endpoint and answers
        started = time.monotonic()
        again = http.post("/v1/embeddings", json={"model": "embedder", "input": texts[0]})
        cold = time.monotonic() - started
        assert again.status_code == 200, again.text
        assert again.json()["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-5)
        print(f"scale from zero: {cold:.2f} s")
    got = aicloud(home, "endpoints", "get", "embedder")
    assert got.returncode == 0 and "scaled to zero" in got.stdout and "ready" in got.stdout


def train(home: Path, name: str, *params: str) -> None:
    result = aicloud(
        home,
        "create",
        "job",
        "--name",
        name,
        "--dataset",
        "projects/legal-rag/datasets/v2",
        "--model-name",
        "clause-risk",
        "--param",
        "epochs=2",
        *params,
        "--wait",
        "-o",
        "json",
        "--",
        "python3",
        str(ROOT / "examples" / "train.py"),
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr


CLAUSE = {"clause_words": 362, "citations": 6, "has_indemnity": 1, "has_liability_cap": 0}


def test_a_jobs_model_is_served_canaried_rolled_back_and_rolled_back_by_hand(stack: Running) -> None:
    home, _ = stack
    train(home, "e2e-risk-1")
    deploy(home, "clause-risk", "--version", "1", "--no-scale-to-zero")
    with router(stack) as http:
        predicted = http.post("/v1/predict", json={"model": "clause-risk", "instances": [CLAUSE]})
        assert predicted.status_code == 200, predicted.text
        assert 0 <= predicted.json()["predictions"][0]["probability"] <= 1
        # version 2 asks its callers for a renamed feature: every canary request fails
        train(
            home,
            "e2e-risk-2",
            "--param",
            "feature_names=word_count,citations,has_indemnity,has_liability_cap",
        )
        assert deploy(home, "clause-risk", "--version", "2", "--canary", "50")["canary_version"] == "2"
        codes = [
            http.post(
                "/v1/predict", json={"model": "clause-risk", "instances": [CLAUSE], "user": f"u{i}"}
            ).status_code
            for i in range(60)
        ]
        assert 200 in codes and any(code >= 400 for code in codes)
        deadline = time.monotonic() + 90
        while True:
            endpoint = json.loads(aicloud(home, "endpoints", "get", "clause-risk", "-o", "json").stdout)
            if any(e["event"] == "canary rolled back" for e in endpoint["history"]):
                break
            assert time.monotonic() < deadline, endpoint["history"]
            time.sleep(1)
        assert endpoint["version"] == "1" and endpoint["canary_version"] is None
        assert "canary error rate" in endpoint["reason"]
        assert all(
            http.post("/v1/predict", json={"model": "clause-risk", "instances": [CLAUSE]}).status_code == 200
            for _ in range(10)
        )
    # a good version 3, then rolled back by hand with one command
    train(home, "e2e-risk-3")
    deploy(home, "clause-risk", "--version", "3")
    rolled = aicloud(home, "endpoints", "rollback", "clause-risk")
    assert rolled.returncode == 0 and "serves version 1" in rolled.stdout, rolled.stdout + rolled.stderr
    assert aicloud(home, "endpoints", "delete", "clause-risk").returncode == 0


def test_bad_deploys_are_refused_with_the_reason_and_leave_nothing(stack: Running) -> None:
    home, _ = stack
    unknown = aicloud(home, "deploy", "model", "--name", "nope", "--model", "no-such-model")
    assert unknown.returncode == 1 and "no model 'no-such-model'" in unknown.stderr
    wide = aicloud(home, "deploy", "model", "--name", "embedder", "--hf-model", "x/y", "--canary", "80")
    assert wide.returncode == 2 and "between 1 and 50" in wide.stderr
    deploy(home, "legal-owned", *MINILM, "--no-wait")
    taken = aicloud(home, "deploy", "model", "--name", "legal-owned", *MINILM, "--team", "research")
    assert taken.returncode == 2 and "belongs to another team" in taken.stderr
    offline = aicloud(
        home, "deploy", "model", "--name", "ghost", "--hf-model", "acme/never-mirrored", timeout=120
    )
    assert offline.returncode == 1 and "acme/never-mirrored" in offline.stderr
    # a job whose output carries a pickle that runs a shell command when loaded
    evil = (
        "import os, pickle, json; out = os.environ['AICLOUD_OUTPUT_DIR'];"
        "json.dump({'kind': 'logistic-regression', 'features': ['a'], 'weights': [0, 1], 'scaling': {}},"
        " open(out + '/model.json', 'w'));"
        "E = type('E', (), {'__reduce__': lambda self: (os.system, ('echo pwned',))});"
        "pickle.dump(E(), open(out + '/extra.pkl', 'wb'))"
    )
    job = aicloud(
        home,
        "create",
        "job",
        "--name",
        "e2e-evil",
        "--model-name",
        "evil",
        "--wait",
        "--",
        "python3",
        "-c",
        evil,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    refused = aicloud(home, "deploy", "model", "--name", "evil", "--model", "evil", timeout=120)
    assert refused.returncode == 1 and "scan refused" in refused.stderr and "system" in refused.stderr
    assert replicas_of(home, "evil") == {}


def test_a_notebook_opens_behind_the_proxy_and_stops_itself_when_idle(stack: Running) -> None:
    home, _ = stack
    created = aicloud(
        home, "create", "notebook", "--name", "nb-e2e", "--idle-timeout", "15", "-o", "json", timeout=200
    )
    assert created.returncode == 0, created.stdout + created.stderr
    notebook = json.loads(created.stdout)
    assert notebook["status"] == "running"
    key = json.loads((home / "keys.json").read_text())["legal"]
    other = json.loads((home / "keys.json").read_text())["research"]
    status = httpx.get(notebook["url"] + "api/status", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert status.status_code == 200 and "last_activity" in status.json()
    assert httpx.get(notebook["url"] + "api/status", timeout=10).status_code == 401
    assert (
        httpx.get(
            notebook["url"] + "api/status", timeout=10, headers={"authorization": f"Bearer {other}"}
        ).status_code
        == 404
    )
    saved = httpx.put(
        notebook["url"] + "api/contents/analysis.ipynb",
        timeout=10,
        headers={"authorization": f"Bearer {key}"},
        json={"type": "notebook"},
    )
    assert saved.status_code in (200, 201), saved.text
    idle_from = time.monotonic()
    over = aicloud(home, "create", "notebook", "--gpus", "9")
    assert over.returncode == 2 and "gpus" in over.stderr
    # stopped by hand, while the first one idles: the CLI waits until the work is on the volume
    second = aicloud(home, "create", "notebook", "--name", "nb-stop", "-o", "json", timeout=200)
    assert second.returncode == 0, second.stderr
    draft = httpx.put(json.loads(second.stdout)["url"] + "api/contents/draft.ipynb", timeout=10,
                      headers={"authorization": f"Bearer {key}"}, json={"type": "notebook"})
    assert draft.status_code in (200, 201), draft.text
    stopped = aicloud(home, "notebooks", "stop", "nb-stop", timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "saved to the team's volume: draft.ipynb" in stopped.stdout
    assert (home / "volumes" / "legal" / "notebooks" / "nb-stop" / "draft.ipynb").is_file()
    deadline = idle_from + 90
    while (got := json.loads(aicloud(home, "notebooks", "get", "nb-e2e", "-o", "json").stdout))[
        "status"
    ] != "stopped":
        assert time.monotonic() < deadline, got
        time.sleep(1)
    assert got["reason"] == "idle" and "analysis.ipynb" in got["saved"]
    assert list((home / "volumes" / "legal" / "notebooks").rglob("analysis.ipynb"))
    again = aicloud(home, "notebooks", "stop", "nb-e2e")
    assert again.returncode != 0 and "already stopped" in again.stderr


def test_a_provisioner_killed_mid_deploy_leaves_one_serving_replica(stack: Running) -> None:
    """SIGKILL the provisioner while the replica's sandbox is starting, start it again: the
    orphaned sandbox is reaped and the workflow finishes the deploy on the new process."""
    home, _ = stack
    status = json.loads(aicloud(home, "dev", "status", "--json").stdout)
    provisioner = psutil.Process(int(next(row["pid"] for row in status if row["name"] == "provisioner")))
    deploy(home, "crash-embedder", *MINILM, "--no-wait")
    deadline = time.monotonic() + 60
    while not (orphans := replicas_of(home, "crash-embedder")):
        assert time.monotonic() < deadline, "no replica was ever started"
        time.sleep(0.02)
    killed_at = datetime.now(UTC).isoformat()
    provisioner.kill()  # the replica's sandbox is up, its server not yet answering
    restarted = aicloud(home, "dev", "restart", "provisioner", timeout=120)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    orphaned = [p for procs in orphans.values() for p in procs]
    assert not [p for p in orphaned if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    deadline = time.monotonic() + 120
    while True:  # serving again: a replica announced by the new process
        endpoint = json.loads(aicloud(home, "endpoints", "get", "crash-embedder", "-o", "json").stdout)
        if any(e["event"] == "ready" and e["at"] > killed_at for e in endpoint["history"]):
            break
        assert time.monotonic() < deadline and endpoint["status"] != "failed", endpoint["history"]
        time.sleep(1)
    serving = replicas_of(home, "crash-embedder")
    assert len(serving) == 1, serving  # the retried start may reuse the id: its processes are new
    with router(stack) as http:
        answer = http.post("/v1/embeddings", json={"model": "crash-embedder", "input": "still here"})
        assert answer.status_code == 200, answer.text


def test_a_job_cannot_see_or_call_the_replicas_and_notebooks_beside_it(stack: Running) -> None:
    """Jobs share the host's root read-only; the serving and notebook folders are masked, so a
    job can neither list them nor connect to a model server's (or Jupyter's) Unix socket."""
    home, _ = stack
    deploy(home, "neighbour", *MINILM, "--no-scale-to-zero")
    serving, notebooks = (Stack(home).scratch_dir(kind) for kind in ("serving", "notebooks"))
    sockets = sorted(serving.glob("neighbour-*/model.sock"))
    assert sockets, "the replica's socket is on the host"
    probe = (
        "import os, socket\n"
        f"for folder in [{str(serving)!r}, {str(notebooks)!r}]:\n"
        "    print('listed' if os.path.isdir(folder) and os.listdir(folder) else 'hidden', folder)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({str(sockets[0])!r}); print('connected')\n"
        "except OSError as exc:\n    print('refused', type(exc).__name__)\n"
    )
    job = aicloud(home, "create", "job", "--name", "e2e-snoop", "--wait", "--", "python3", "-c", probe,
                  timeout=120)
    assert job.returncode == 0, job.stdout + job.stderr
    log = aicloud(home, "jobs", "logs", "e2e-snoop").stdout
    assert log.count("hidden") == 2 and "refused" in log, log
    assert "listed" not in log and "connected" not in log, log
