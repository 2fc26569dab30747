"""``aicloud create job`` and ``aicloud jobs ...``."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.markup import escape

from aicloud.client import ApiError, PlatformClient
from aicloud.durations import parse_duration
from aicloud.output import Format, console, emit, errors, fail
from contracts.jobs import PARAM_KEY_PATTERN

create_app = typer.Typer(help="Create work on the platform.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: versions, metrics, lineage, aliases.",
                         no_args_is_help=True)
jobs_app = typer.Typer(help="Inspect and follow jobs.", no_args_is_help=True)
TERMINAL = {"completed", "failed", "terminated", "rejected"}
DECISIONS = ("admitted", "queued", "rejected")
DECISION_POLL_S = 0.05
COLUMNS = ("job_id", "status", "reason", "created_at")

Team = Annotated[str | None, typer.Option(
    envvar="AICLOUD_TEAM", help="Your team, to pick its key on the local stack ($AICLOUD_TEAM)."
)]
Output = Annotated[Format, typer.Option("--output", "-o", help="table or json")]


def _client(team: str | None) -> PlatformClient:
    try:
        return PlatformClient(team=team)
    except ApiError as exc:
        raise fail(str(exc), hint=exc.hint, code=exc.exit_code) from None


def _call(client: PlatformClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return client.request(method, path, **kwargs)
    except ApiError as exc:
        raise fail(str(exc), hint=exc.hint, code=exc.exit_code) from None


@create_app.command("job", context_settings={"allow_extra_args": True})
def create_job(
    command: Annotated[list[str], typer.Argument(help="The command, after `--`.")],
    team: Team = None,
    name: Annotated[str | None, typer.Option(help="Job id (generated when omitted).")] = None,
    job_type: Annotated[
        str, typer.Option("--type", help="fine-tune|training|batch-inference|evaluation")
    ] = "training",
    gpus: Annotated[int, typer.Option(min=0, help="GPUs to request.")] = 0,
    gpu_type: Annotated[str | None, typer.Option(
        help="GPU type, one of the product's (`aicloud catalog list`; `aicloud cluster` shows what "
             "the engine has free); default: the first the engine offers.")] = None,
    product: Annotated[str | None, typer.Option(
        help="Compute product (`aicloud catalog list`); default fine-tune with GPUs, else cpu-small."
    )] = None,
    dataset: Annotated[str | None, typer.Option(help="e.g. projects/legal-rag/datasets/v2")] = None,
    max_runtime: Annotated[str | None, typer.Option(
        help="Stop the job after this long: 90s, 30m, 12h or seconds.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE hyper-parameter, repeatable.")] = None,
    model_name: Annotated[str | None, typer.Option(
        help="Register the job's output directory as a new version of this model.")] = None,
    image: Annotated[str | None, typer.Option(
        help="Container image on the kubernetes backend, pinned by digest "
             "(registry/name@sha256:...) and scanned (policies/image-attestations.yaml).")] = None,
    wait: Annotated[bool | None, typer.Option(
        "--wait/--no-wait",
        help="--wait: follow the job until it ends (exit 0 only when it completed). --no-wait: return "
             "as soon as it is recorded (requested), before quota decides. Neither: return once quota "
             "has decided.")] = None,
    decision_timeout: Annotated[str, typer.Option(
        help="How long to wait for quota's decision: 30s, 2m or seconds.")] = "30s",
    output: Output = Format.table,
) -> None:
    """Submit a job: `aicloud create job --team legal --gpus 1 -- python train.py`.

    It returns once quota has decided (usually within milliseconds). Admitted: exit 0. Queued
    behind the team's running work (the reason says how many jobs are ahead): exit 0, and it
    starts by itself. Refused: the rule it broke and what to change, exit 1 (with -o json, the
    job with its status and reason). Not decided within --decision-timeout: exit 2; the job stays
    requested, `aicloud jobs get ID` shows where it stands.
    """
    runtime_s = None if max_runtime is None else parse_duration(max_runtime, option="--max-runtime")
    body = {"name": name, "job_type": job_type, "gpus": gpus, "gpu_type": gpu_type, "product": product,
            "dataset": dataset, "max_runtime_s": runtime_s, "command": command,
            "params": _params(param), "model_name": model_name, "image": image}
    timeout_s = parse_duration(decision_timeout, option="--decision-timeout")
    client = _client(team)
    job = _call(client, "POST", "/v1/jobs", json=body)
    if output is Format.table:
        console.print(f"job [bold]{job['job_id']}[/] submitted for team {job['team']} "
                      f"[dim](trace {client.trace_id})[/]")
    if wait is not False:
        job = _decided(client, job, timeout_s=timeout_s, output=output, say=not wait)
    if wait and job["status"] != "rejected":
        job = _wait(client, job["job_id"], timeout=None, quiet=output is Format.json)
    emit(job, fmt=output, columns=COLUMNS)
    if job["status"] == "rejected":
        raise fail(f"job {job['job_id']} was refused: {job['reason']}",
                   hint="it will not run: change the request as the reason says and submit it again")
    if wait and job["status"] != "completed":
        raise typer.Exit(1)


def _params(items: list[str] | None) -> dict[str, str]:
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--param {item!r} is not KEY=VALUE", hint="e.g. --param lr=0.001", code=2)
        if not re.fullmatch(PARAM_KEY_PATTERN, key):
            raise fail(f"--param {item!r}: the key {key!r} cannot be an environment variable name",
                       hint="the job reads it as AICLOUD_PARAM_<KEY>: use letters, digits and "
                            "underscores, not starting with a digit, e.g. --param learning_rate=0.001",
                       code=2)
        params[key] = value
    return params


def decision_of(job: dict[str, Any]) -> tuple[str, str] | None:
    """Quota's latest decision on ``job`` with its reason; None while it is still requested.

    A job seen past its decision with none in its history was admitted: the catalog keeps a
    status from moving backwards, so an ``admitted`` that arrives after ``provisioning`` is
    never recorded."""
    if job["status"] == "requested":
        return None
    for entry in reversed(job.get("history") or []):
        if entry.get("status") in DECISIONS:
            return entry["status"], entry.get("reason") or ""
    return ("rejected" if job["status"] == "rejected" else "admitted"), job.get("reason") or ""


def decision_line(job: dict[str, Any]) -> str:
    """What an admitted or queued job tells its submitter."""
    decided = decision_of(job)
    assert decided is not None
    status, reason = decided
    job_id = job["job_id"]
    now = f" (now {job['status']})" if job["status"] != status else ""
    if status == "queued":
        return (f"job {job_id} is queued{now}: {reason.removeprefix('queued: ')}\n"
                f"follow it with `aicloud jobs wait {job_id}`")
    return f"job {job_id} {status}{now}" + (f": {reason}" if reason else "")


def _decided(client: PlatformClient, job: dict[str, Any], *, timeout_s: int, output: Format,
             say: bool) -> dict[str, Any]:
    """Poll (quickly: quota decides in milliseconds) until quota has decided on the new job,
    at most ``timeout_s``; ``say`` prints an admission or a place in the queue."""
    job_id = job["job_id"]
    deadline = time.monotonic() + timeout_s
    while decision_of(job) is None:
        if time.monotonic() > deadline:
            emit(job, fmt=output, columns=COLUMNS)
            raise fail(f"quota has not decided on job {job_id} after {timeout_s} s: it stays "
                       "requested and is decided once quota gets to it",
                       hint=f"check it with `aicloud jobs get {job_id}`", code=2)
        time.sleep(DECISION_POLL_S)
        job = _call(client, "GET", f"/v1/jobs/{job_id}")
    if say and output is Format.table and job["status"] != "rejected":
        console.print(escape(decision_line(job)), highlight=False, soft_wrap=True)
    return dict(job)


@jobs_app.command("list")
def list_jobs(team: Team = None, output: Output = Format.table,
              limit: Annotated[int, typer.Option(min=1, max=500)] = 50) -> None:
    """Your team's most recent jobs."""
    emit(_call(_client(team), "GET", "/v1/jobs", params={"limit": limit}), fmt=output,
         columns=COLUMNS, empty="No jobs yet. Start one: aicloud create job --gpus 1 -- python3 train.py")


@jobs_app.command("get")
def get_job(job_id: str, team: Team = None, output: Output = Format.table) -> None:
    """One job with its status and the reason for it, and where it runs (node, GPU ids, sandbox)."""
    job = _call(_client(team), "GET", f"/v1/jobs/{job_id}")
    emit(job, fmt=output, columns=COLUMNS)
    if output is Format.table and (where := placement_line(job)):
        console.print(where)


def placement_line(job: dict[str, Any]) -> str:
    """Where the job's process runs (ran): its node, the GPUs it was given and its sandbox."""
    placement = (job.get("result") or {}).get("placement") or {}
    parts = []
    if placement.get("node_id") or placement.get("host"):
        node = placement.get("node_id") or ""
        parts.append(f"node {node[:12]}" + (f" ({placement['host']})" if placement.get("host") else ""))
    if placement.get("gpu_ids"):
        parts.append(f"GPUs {','.join(placement['gpu_ids'])}")
    if placement.get("isolation"):
        parts.append(f"sandbox {placement['isolation']}")
    return "placed on " + ", ".join(parts) if parts else ""


@jobs_app.command("wait")
def wait_job(
    job_id: str, team: Team = None, output: Output = Format.table,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait until a job ends, showing its progress. Exit code 0 only when it completed."""
    job = _wait(_client(team), job_id, timeout=timeout, quiet=output is Format.json)
    emit(job, fmt=output, columns=COLUMNS)
    if job["status"] != "completed":
        raise typer.Exit(1)


def _wait(client: PlatformClient, job_id: str, *, timeout: float | None, quiet: bool) -> dict[str, Any]:
    """Poll until the job ends, printing every status it goes through (from the job's own
    history, so a short one is not skipped between polls) to stderr, so -o json stays clean."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    while True:
        job = _call(client, "GET", f"/v1/jobs/{job_id}")
        history = job.get("history") or [{"status": job["status"], "at": None, "reason": ""}]
        if not quiet:
            for entry in history[shown:]:
                errors.print(_status_line(job_id, entry, history[0]))
        shown = len(history)
        if job["status"] in TERMINAL:
            return dict(job)
        if deadline is not None and time.monotonic() > deadline:
            raise fail(f"{job_id} is still {job['status']} after {timeout}s", code=2)
        time.sleep(0.25)


def _status_line(job_id: str, entry: dict[str, Any], first: dict[str, Any]) -> str:
    """``  [  1.2s] job: running``, the time counted from the job's request."""
    offset = ""
    if entry.get("at") and first.get("at"):
        seconds = (datetime.fromisoformat(entry["at"]) - datetime.fromisoformat(first["at"])).total_seconds()
        offset = f"[{seconds:5.1f}s] "
    why = f" ({entry['reason']})" if entry.get("reason") else ""
    return f"  {offset}{job_id}: {entry['status']}{why}"


@jobs_app.command("cancel")
def cancel_job(job_id: str, team: Team = None, output: Output = Format.table,
               wait: Annotated[bool, typer.Option(help="Wait until it has stopped.")] = True) -> None:
    """Stop a job: SIGTERM, a grace period, then kill. It ends `terminated` (cancelled)."""
    client = _client(team)
    _call(client, "POST", f"/v1/jobs/{job_id}/cancel")
    job = _wait(client, job_id, timeout=120, quiet=output is Format.json) if wait else \
        _call(client, "GET", f"/v1/jobs/{job_id}")
    emit(job, fmt=output, columns=COLUMNS)


@jobs_app.command("logs")
def job_logs(
    job_id: str, team: Team = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the job ends.")] = False,
) -> None:
    """The job's output (stdout and stderr)."""
    client = _client(team)
    offset = 0
    while True:
        chunk = _call(client, "GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})
        if chunk["data"]:
            typer.echo(chunk["data"], nl=False)
        offset = chunk["next_offset"]
        if not follow:
            return
        if not chunk["data"]:
            if _call(client, "GET", f"/v1/jobs/{job_id}")["status"] in TERMINAL:
                return
            time.sleep(0.5)


@models_app.command("list")
def list_models(team: Team = None, output: Output = Format.table) -> None:
    """Your team's models."""
    emit(_call(_client(team), "GET", "/v1/models"), fmt=output,
         columns=("name", "latest_version", "versions", "updated_at"),
         empty="No models yet: a job registers one with aicloud create job --model-name NAME ...")


@models_app.command("get")
def get_model(name: str, team: Team = None, output: Output = Format.table) -> None:
    """A model's versions with metrics and lineage (dataset -> job -> version)."""
    model = _call(_client(team), "GET", f"/v1/models/{name}")
    if output is Format.json:
        emit(model, fmt=output, columns=())
        return
    rows = [{"version": v["version"], "aliases": v["aliases"], "job": v["job_id"],
             "dataset": f"{v['lineage']['dataset']['path']} "
                        f"({(v['lineage']['dataset']['sha256'] or '')[:12]})",
             "metrics": ", ".join(f"{k}={val:g}" for k, val in sorted(v["metrics"].items())),
             "artifacts": len(v["artifacts"]),
             "mlflow run": (v["lineage"].get("tracking") or {}).get("run_id", "")} for v in model["versions"]]
    emit(rows, fmt=output,
         columns=("version", "aliases", "job", "dataset", "metrics", "artifacts", "mlflow run"))


@models_app.command("alias")
def alias_model(name: str, alias: str, version: int, team: Team = None,
                output: Output = Format.table) -> None:
    """Point an alias at a version: `aicloud models alias clause-risk production 3`."""
    model = _call(_client(team), "PUT", f"/v1/models/{name}/aliases/{alias}", json={"version": version})
    emit({"name": name, "alias": alias, "version": model["aliases"][alias]}, fmt=output,
         columns=("name", "alias", "version"))
