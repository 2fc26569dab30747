"""Backup and restore of the whole local stack through the CLI: a platform with jobs, a model
and its lineage, spend, a budget and keys is backed up, lost with its home, and restored into a
new one, where every read answers as it did before."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_local_stack import ROOT, aicloud, processes_under

pytestmark = pytest.mark.e2e

READS: tuple[tuple[str, ...], ...] = (
    ("jobs", "list"), ("models", "list"), ("models", "get", "clause-risk"), ("bill",),
    ("bill", "--team", "research", "--by", "kind"), ("budgets", "list"), ("router", "keys", "list"),
    ("router", "routes"),
)


def reads(home: Path) -> dict[tuple[str, ...], Any]:
    answers = {}
    for read in READS:
        done = aicloud(home, *read, "-o", "json")
        assert done.returncode == 0, (read, done.stderr)
        answers[read] = json.loads(done.stdout)
    # the circuits' state is the router's memory of its last calls, not the platform's data
    answers[("router", "routes")].pop("circuits", None)
    return answers


def settled(home: Path, *, within_s: float = 60) -> dict[tuple[str, ...], Any]:
    """The reads once two in a row agree: every event of the workload has been taken in."""
    deadline, last = time.monotonic() + within_s, reads(home)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = reads(home)
        if now == last:
            return now
        last = now
    raise AssertionError("the platform's answers kept changing")


def chat(home: Path, key: str) -> dict[str, Any]:
    status = {r["name"]: r for r in json.loads(aicloud(home, "dev", "status", "--json").stdout)}
    answer = httpx.post(f"{status['inference-router']['url']}/v1/chat/completions", timeout=30,
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return {"model": body["model"], "content": body["choices"][0]["message"]["content"]}


def workload(home: Path) -> dict[str, str]:
    """Two jobs to completion (one registers a model), a budget, a router key and calls."""
    trained = aicloud(home, "create", "job", "--type", "fine-tune", "--gpus", "1", "--name", "dr-train",
                      "--dataset", "projects/legal-rag/datasets/v2", "--model-name", "clause-risk",
                      "--param", "epochs=2", "--wait", "-o", "json", "--",
                      "python3", str(ROOT / "examples" / "train.py"))
    assert trained.returncode == 0 and json.loads(trained.stdout)["status"] == "completed", trained.stderr
    second = aicloud(home, "create", "job", "--name", "dr-second", "--team", "research", "--wait",
                     "-o", "json", "--", "python3", "-c", "print('second')")
    assert second.returncode == 0 and json.loads(second.stdout)["status"] == "completed", second.stderr
    budget = aicloud(home, "budgets", "set", "--team", "research", "--amount", "250", "--action", "notify")
    assert budget.returncode == 0, budget.stderr
    created = aicloud(home, "router", "keys", "create", "--team", "research", "--name", "dr", "-o", "json")
    assert created.returncode == 0, created.stderr
    keys = {"demo": json.loads((home / "router-keys.json").read_text())["legal"],
            "created": json.loads(created.stdout)["key"]}
    for key in keys.values():
        chat(home, key)
    return keys


def test_a_platform_restored_from_its_backup_answers_as_before(tmp_path: Path) -> None:
    home, restored, archive = tmp_path / "lost", tmp_path / "restored", tmp_path / "platform.tar.gz"
    try:
        up = aicloud(home, "dev", "up", "--detach", "--free-ports", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        keys = workload(home)
        answers = {name: chat(home, key) for name, key in keys.items()}
        before = settled(home)

        backed = aicloud(home, "admin", "backup", "--to", str(archive), "-o", "json")
        assert backed.returncode == 0, backed.stderr
        assert "nats: AICLOUD_JOBS" in backed.stderr and "postgres: dumped" in backed.stderr  # progress
        summary = json.loads(backed.stdout)
        assert summary["streams"] >= 12 and summary["bytes"] == archive.stat().st_size
        assert archive.stat().st_mode & 0o077 == 0  # it holds keys: the owner's alone
        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        kinds = {part["kind"] for part in manifest["parts"]}
        assert {"postgres", "nats", "temporal", "policies", "home"} <= kinds
        assert all(len(part["sha256"]) == 64 and part["bytes"] >= 0 for part in manifest["parts"])
        assert "temporal" in manifest["stack"]["components"]

        assert aicloud(home, "dev", "down").returncode == 0
        shutil.rmtree(home)

        (restored / "something").mkdir(parents=True)
        refused = aicloud(restored, "admin", "restore", "--from", str(archive), "--free-ports")
        assert refused.returncode == 1 and "is not empty" in " ".join(refused.stderr.split())
        shutil.rmtree(restored)

        started = time.monotonic()
        back = aicloud(restored, "admin", "restore", "--from", str(archive), "--free-ports", "-o", "json",
                       timeout=300)
        assert back.returncode == 0, back.stdout + back.stderr
        assert json.loads(back.stdout)["took_s"] <= time.monotonic() - started
        status = json.loads(aicloud(restored, "dev", "status", "--json").stdout)
        assert all(row["healthy"] for row in status), status

        assert reads(restored) == before
        assert {name: chat(restored, key) for name, key in keys.items()} == answers
        log = aicloud(restored, "jobs", "logs", "dr-train")
        assert "epoch 2/2" in log.stdout, log.stdout + log.stderr
        again = aicloud(restored, "create", "job", "--name", "dr-after", "--wait", "-o", "json", "--", "true")
        assert again.returncode == 0 and json.loads(again.stdout)["status"] == "completed", again.stderr
    finally:
        for each in (home, restored):
            if each.exists():
                aicloud(each, "dev", "down")
            for proc in processes_under(each):
                proc.kill()
