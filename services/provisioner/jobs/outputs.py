"""What a finished job leaves behind: artifacts (stored with digests), metrics, and the digests
that make its lineage checkable (dataset content, code)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import structlog

from contracts import JobRequested
from contracts.jobs import Artifact
from services.provisioner.jobs.tracking import track
from workflows.job import JobOutputs

log = structlog.get_logger(__name__)
MAX_METRIC_LINES = 100_000


def collect(*, request: JobRequested, workspace: Path, dataset_dir: Path | None,
            artifact_root: Path, tracking_uri: str | None = None) -> JobOutputs:
    """Everything the model version needs; metrics from the metrics file and from MLflow."""
    metrics = read_metrics(workspace / "metrics.jsonl", job_id=request.job_id)
    digests = {"dataset_digest": tree_digest(dataset_dir) if dataset_dir is not None else None,
               "code_digest": code_digest(request.command, workspace)}
    tracked = track(request=request, workspace=workspace, metrics=metrics, digests=digests,
                    server_uri=tracking_uri)
    return JobOutputs(
        artifacts=store_artifacts(workspace / "output", artifact_root / request.tenant / request.job_id),
        metrics={**metrics, **tracked.metrics}, logged_params=tracked.params, tracking=tracked.run,
        **digests,
    )


def store_artifacts(output_dir: Path, destination: Path) -> list[Artifact]:
    if not output_dir.is_dir():
        return []
    stored = []
    for path in sorted(p for p in output_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.relative_to(output_dir).as_posix()
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        stored.append(Artifact(name=name, uri=target.resolve().as_uri(), sha256=file_digest(target),
                               bytes=target.stat().st_size))
    return stored


def read_metrics(path: Path, *, job_id: str) -> dict[str, float]:
    """Last value per metric from JSON lines: {"name": "loss", "value": 0.1} or {"loss": 0.1}."""
    if path.is_symlink():  # the job made it: it must not make the platform read another file
        log.warning("job.metrics_file_refused", job_id=job_id, why="a symbolic link")
        return {}
    if not path.is_file():
        return {}
    metrics: dict[str, float] = {}
    skipped = 0
    with path.open(errors="replace") as lines:
        for number, line in enumerate(lines):
            if number >= MAX_METRIC_LINES:
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(record, dict):
                skipped += 1
                continue
            if "name" in record and "value" in record:
                record = {record["name"]: record["value"]}
            for name, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and name != "step":
                    metrics[str(name)] = float(value)
    if skipped:
        log.warning("job.metrics_lines_skipped", job_id=job_id, skipped=skipped)
    return metrics


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over every file's relative path and content, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def code_digest(command: list[str], workspace: Path) -> str:
    """sha256 over the argv and the content of every argument that names a file."""
    digest = hashlib.sha256(json.dumps(command).encode())
    for arg in command:
        candidate = Path(arg) if Path(arg).is_absolute() else workspace / arg
        if candidate.is_file():
            digest.update(file_digest(candidate).encode())
    return digest.hexdigest()
