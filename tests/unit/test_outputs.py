"""What the provisioner collects from a finished job: metrics, artifacts, digests."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts import JobRequested
from services.provisioner.jobs.outputs import code_digest, collect, read_metrics, tree_digest

pytestmark = pytest.mark.unit


def test_metrics_keep_the_last_value_and_skip_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 0.9, "accuracy": 0.5}\n'
        "not json at all\n"
        '{"name": "f1", "value": 0.7}\n'
        '["a", "list"]\n'
        '{"step": 2, "loss": 0.4, "note": "text is ignored", "ok": true}\n'
    )
    assert read_metrics(path, job_id="j") == {"loss": 0.4, "accuracy": 0.5, "f1": 0.7}
    assert read_metrics(tmp_path / "missing.jsonl", job_id="j") == {}


def test_digests_follow_content(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("x\n1\n")
    first = tree_digest(data)
    assert tree_digest(data) == first
    (data / "a.csv").write_text("x\n2\n")
    assert tree_digest(data) != first

    (tmp_path / "train.py").write_text("print(1)")
    before = code_digest(["python3", "train.py"], tmp_path)
    (tmp_path / "train.py").write_text("print(2)")
    assert code_digest(["python3", "train.py"], tmp_path) != before


def test_collect_stores_artifacts_with_digests(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "output" / "sub").mkdir(parents=True)
    (workspace / "output" / "model.json").write_text('{"w": [1]}')
    (workspace / "output" / "sub" / "vocab.txt").write_text("a\nb\n")
    request = JobRequested(tenant="legal", job_id="j1", command=["true"])
    outputs = collect(request=request, workspace=workspace, dataset_dir=None,
                      artifact_root=tmp_path / "store")
    assert [a.name for a in outputs.artifacts] == ["model.json", "sub/vocab.txt"]
    stored = tmp_path / "store" / "legal" / "j1" / "sub" / "vocab.txt"
    assert stored.read_text() == "a\nb\n"
    assert outputs.artifacts[1].uri == stored.resolve().as_uri()
    assert outputs.artifacts[1].bytes == 4 and len(outputs.artifacts[1].sha256) == 64
    assert outputs.dataset_digest is None and outputs.code_digest


def test_a_log_that_is_not_utf8_reads_with_replacement_characters_and_never_raises() -> None:
    from services.provisioner.jobs.api import decode_log

    data = b"loss 0.5\n\xff\xfe garbage \xc3\x28\n"
    text, used = decode_log(data)
    assert text == "loss 0.5\n\ufffd\ufffd garbage \ufffd(\n" and used == len(data)


def test_a_character_cut_at_the_end_of_a_log_chunk_waits_for_the_next_chunk() -> None:
    from services.provisioner.jobs.api import decode_log

    euro = "€".encode()  # three bytes
    data = b"price " + euro + b" " + euro[:2]
    text, used = decode_log(data)
    assert text == "price € " and used == len(data) - 2
    rest, _ = decode_log(data[used:] + euro[2:])
    assert rest == "€"
    assert decode_log(euro[:1]) == ("\ufffd", 1)  # alone in its chunk: shown, never stuck
    assert decode_log(b"") == ("", 0)


async def test_a_log_offset_past_the_end_reads_nothing_and_one_past_bigint_is_refused(tmp_path: Path) -> None:
    """Found by fuzzing: a huge offset made seek() raise, a 500 (and the catalog's 500 with it)."""
    import httpx
    from fastapi import FastAPI

    from services.provisioner.backends.local import LocalBackend
    from services.provisioner.jobs.api import build_router

    async def no_preempt(job_id: str, reason: str) -> bool:
        return False

    backend = LocalBackend(work_dir=tmp_path / "jobs", memory_limit_mb=64, isolation="rlimits")
    (tmp_path / "jobs" / "legal" / "j1").mkdir(parents=True)
    (tmp_path / "jobs" / "legal" / "j1" / "job.log").write_text("epoch 1\n")
    app = FastAPI()
    app.include_router(build_router(backend, no_preempt))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client:
        for offset in (2, 8, 2**62, 2**63 - 1):
            chunk = await client.get("/internal/jobs/legal/j1/logs", params={"offset": offset})
            assert chunk.status_code == 200, chunk.text
            assert chunk.json() == {"data": "epoch 1\n"[offset:], "next_offset": max(offset, 8)}
        past = await client.get("/internal/jobs/legal/j1/logs", params={"offset": 2**63})
    assert past.status_code == 422
