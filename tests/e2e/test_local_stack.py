"""The whole local platform through the CLI: up, the golden path, bad input, down."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
import pytest
from mlflow.tracking import MlflowClient
from nats.js.api import DeliverPolicy

from aicloud.local.identities import password_file
from contracts import UsageRecorded
from contracts.flows import PUBLISHER
from contracts.wire import inbox_prefix

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.e2e


def aicloud(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_TEAM": "legal"}
    return subprocess.run(
        [sys.executable, "-m", "aicloud", *args], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def processes_under(home: Path) -> list[psutil.Process]:
    """Every process whose command line or working directory points into ``home``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if str(home) in text:
            found.append(proc)
    return found


def nats_login(components: dict[str, dict[str, object]]) -> dict[str, Any]:
    """``nats.connect`` options for the stack's bus as ops, from what `dev status` says."""
    row = components["nats"]
    return {"servers": str(row["url"]), "user": str(row["user"]),
            "password": Path(str(row["password_file"])).read_text().strip()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, dict[str, object]]]]:
    home = tmp_path_factory.mktemp("stack")
    result = aicloud(home, "dev", "up", "--detach", "--free-ports")
    assert result.returncode == 0, result.stdout + result.stderr
    status = aicloud(home, "dev", "status", "--json")
    components = {row["name"]: row for row in json.loads(status.stdout)}
    yield home, components
    aicloud(home, "dev", "down")
    for proc in processes_under(home):
        proc.kill()


def test_up_reports_every_component_healthy(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    assert set(components) - {"prometheus", "alertmanager"} == {  # those two: where installed
        "nats", "postgres", "temporal", "catalog", "quota", "provisioner", "cost-ledger",
        "inference-router", "agent-runtime", "observability-collector", "fake-llm",
    }
    for name, row in components.items():
        assert row["healthy"] is True, name
        assert isinstance(row["pid"], int) and psutil.pid_exists(row["pid"])
    key = json.loads((home / "router-keys.json").read_text())["legal"]
    models = httpx.get(f"{components['inference-router']['url']}/v1/models",
                       headers={"authorization": f"Bearer {key}"}, timeout=5).json()
    assert "gpt-4o-mini" in [m["id"] for m in models["data"]]
    ui = httpx.get(str(components["temporal"]["url"]), timeout=5)
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    for name in ("catalog", "quota", "provisioner"):
        ready = httpx.get(f"{components[name]['url']}/readyz", timeout=5).json()
        assert ready["status"] == "ready", ready
    assert "temporal" in httpx.get(f"{components['provisioner']['url']}/readyz").json()["checks"]


# Every read a new user tries first, on a brand-new stack: (command, whether its JSON is the empty
# list of things that user made). Run before any test creates anything.
EMPTY_READS: list[tuple[tuple[str, ...], bool]] = [
    (("jobs", "list"), True), (("models", "list"), True), (("endpoints", "list"), True),
    (("notebooks", "list"), True), (("sandboxes", "list"), True), (("sandboxes", "templates"), False),
    (("catalog", "list"), False), (("router", "keys", "list"), False), (("router", "routes"), False),
    (("budgets", "list"), False), (("bill",), False), (("bill", "--by", "model", "--step", "day"), False),
    (("cluster",), False), (("slo", "status"), False), (("dev", "status"), False),
]


def test_every_read_on_a_brand_new_stack_answers_empty_never_an_error(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack

    def read(args: tuple[str, ...]) -> tuple[tuple[str, ...], subprocess.CompletedProcess[str]]:
        return args, aicloud(home, *args)

    runs = [(*command, *output) for command, _ in EMPTY_READS for output in ((), ("-o", "json"))]
    with ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(read, runs))
    for args, result in results.items():
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr[-2000:])
    for command, user_made in EMPTY_READS:
        found = json.loads(results[(*command, "-o", "json")].stdout)
        if user_made:
            lists = [found] if isinstance(found, list) else [v for v in found.values() if isinstance(v, list)]
            assert lists == [[]], (command, found)
        text = results[command].stdout.strip()
        assert text.startswith("No ") if user_made else text, (command, text)  # says so, with what to do
    # what a user gets for something that does not exist: one line naming it, exit 1, no trace
    missing = [("jobs", "get", "nope-1"), ("models", "get", "nope"), ("endpoints", "get", "nope"),
               ("notebooks", "get", "nope"), ("sandboxes", "get", "sb-nope"), ("agents", "get", "run-nope")]
    for command in missing:
        result = aicloud(home, *command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, (command, result.stderr[-2000:])
        assert "nope" in result.stderr + result.stdout, (command, result.stderr)


ROOT = Path(__file__).resolve().parents[2]


def test_golden_path_trains_and_registers_a_model_with_lineage(
    stack: tuple[Path, dict[str, dict[str, object]]],
) -> None:
    home, _ = stack
    result = aicloud(home, "create", "job", "--type", "fine-tune", "--gpus", "1", "--name", "e2e-train",
                     "--dataset", "projects/legal-rag/datasets/v2", "--model-name", "clause-risk",
                     "--param", "epochs=3", "--param", "tracking=mlflow", "--wait", "-o", "json", "--",
                     "python3", str(ROOT / "examples" / "train.py"))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "completed" and job["result"]["exit_code"] == 0
    assert job["result"]["model"] == {"name": "clause-risk", "version": 1}
    assert "epoch 3/3" in (home / "jobs" / "legal" / "e2e-train" / "job.log").read_text()
    # every status it went through, in order, each once, from the job's own history
    waited = aicloud(home, "jobs", "wait", "e2e-train")
    assert waited.returncode == 0, waited.stderr
    lines = [line.split("e2e-train: ")[1].split(" (")[0] for line in waited.stderr.splitlines()
             if "e2e-train: " in line]
    assert lines == ["requested", "admitted", "provisioning", "running", "completed"], waited.stderr

    model = json.loads(aicloud(home, "models", "get", "clause-risk", "-o", "json").stdout)
    [version] = model["versions"]
    assert version["lineage"]["dataset"]["path"] == "projects/legal-rag/datasets/v2"
    assert len(version["lineage"]["dataset"]["sha256"]) == 64
    assert version["lineage"]["job"]["id"] == "e2e-train"
    assert version["lineage"]["job"]["params"] == {"epochs": "3", "tracking": "mlflow"}
    assert [a["name"] for a in version["artifacts"]] == ["model.json"]
    assert version["metrics"]["accuracy"] > 0.6
    # the job logged to MLflow in its sandbox: its params are on the version, its run was copied
    assert version["lineage"]["job"]["logged_params"] == {"epochs": "3", "lr": "0.1", "seed": "0"}
    tracking = version["lineage"]["tracking"]
    assert tracking["uri"] == f"sqlite:///{home / 'mlflow.db'}"
    run = MlflowClient(tracking["uri"]).get_run(tracking["run_id"])
    assert run.data.tags["aicloud.job_id"] == "e2e-train" and run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == pytest.approx(version["metrics"]["accuracy"])

    aliased = aicloud(home, "models", "alias", "clause-risk", "production", "1", "-o", "json")
    assert aliased.returncode == 0 and json.loads(aliased.stdout)["version"] == 1
    missing = aicloud(home, "models", "alias", "clause-risk", "production", "7")
    assert missing.returncode == 1 and "has no version 7" in missing.stderr
    other_team = aicloud(home, "models", "get", "clause-risk", "--team", "research")
    assert other_team.returncode == 1 and "no model 'clause-risk' in team 'research'" in other_team.stderr


def test_over_quota_job_is_rejected_with_a_reason(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    result = aicloud(home, "create", "job", "--gpus", "16", "--name", "e2e-huge", "--wait",
                     "-o", "json", "--", "true")
    assert result.returncode == 1
    job = json.loads(result.stdout)
    assert job["status"] == "rejected"
    assert "more than 4 GPUs needs manager approval" in job["reason"]
    # without --wait it still returns the refusal, once quota has decided
    quick = aicloud(home, "create", "job", "--gpus", "16", "--name", "e2e-huge-2", "-o", "json", "--", "true")
    assert quick.returncode == 1
    assert json.loads(quick.stdout)["status"] == "rejected"
    table = aicloud(home, "create", "job", "--gpus", "16", "--name", "e2e-huge-3", "--", "true")
    said = " ".join(table.stderr.split())
    assert table.returncode == 1
    assert "job e2e-huge-3 was refused: more than 4 GPUs needs manager approval" in said


def test_create_job_returns_once_quota_admitted_it(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    result = aicloud(home, "create", "job", "--name", "e2e-admitted", "--max-runtime", "3s", "-o", "json",
                     "--", "true")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] in {"admitted", "provisioning", "running", "completed"}, job
    assert job["request"]["max_runtime_s"] == 3
    table = aicloud(home, "create", "job", "--name", "e2e-admitted-2", "--", "true")
    assert table.returncode == 0 and "job e2e-admitted-2 admitted" in table.stdout, table.stdout
    fire_and_forget = aicloud(home, "create", "job", "--name", "e2e-no-wait", "--no-wait", "-o", "json",
                              "--", "true")
    assert fire_and_forget.returncode == 0
    assert json.loads(fire_and_forget.stdout)["status"] == "requested"


def test_a_job_beyond_the_teams_free_gpus_is_queued_and_says_why(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    holders = ("e2e-hold-1", "e2e-hold-2")  # 2 x 4 GPUs: all of the team's quota of 8
    for name in holders:
        held = aicloud(home, "create", "job", "--gpus", "4", "--name", name, "--", "sleep", "300")
        assert held.returncode == 0 and f"job {name} admitted" in held.stdout, held.stdout + held.stderr
    try:
        queued = aicloud(home, "create", "job", "--gpus", "1", "--name", "e2e-queued", "--", "true")
        said = " ".join(queued.stdout.split())
        assert queued.returncode == 0, queued.stderr
        assert "job e2e-queued is queued: team legal uses 8 of 8 GPUs" in said
        assert "0 job(s) ahead" in said and "aicloud jobs wait e2e-queued" in said
    finally:
        aicloud(home, "jobs", "cancel", "e2e-queued")  # first, or it would start
        for name in holders:
            aicloud(home, "jobs", "cancel", name, "--no-wait")


def test_create_job_stops_waiting_for_a_decision_quota_does_not_take(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    quota = psutil.Process(int(str(components["quota"]["pid"])))
    quota.suspend()
    try:
        result = aicloud(home, "create", "job", "--name", "e2e-undecided", "--decision-timeout", "1s",
                         "--", "true")
    finally:
        quota.resume()
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, said
    assert "quota has not decided on job e2e-undecided after 1 s: it stays requested" in said
    assert "aicloud jobs get e2e-undecided" in said


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "job", "--name", "Bad_Name", "--", "true"),
         "name: String should match pattern '^[a-z0-9][a-z0-9-]{0,62}$'"),
        (("create", "job", "--param", "novalue", "--", "true"), "is not KEY=VALUE"),
        (("create", "job", "--max-runtime", "3x", "--", "true"), "--max-runtime '3x' is not a duration"),
        (("create", "job", "--type", "mining", "--", "true"), "job_type"),
        (("create", "job", "--product", "gpu-farm", "--", "true"), "unknown product 'gpu-farm'"),
        (("create", "job", "--dataset", "projects/../secrets/datasets/x", "--", "true"),
         "is not a dataset path"),
        (("jobs", "get", "does-not-exist"), "no job 'does-not-exist'"),
        (("jobs", "list", "--team", "ghost"), "no API key for team 'ghost'"),
    ],
)
def test_bad_cli_input_gets_a_clear_error(stack: tuple[Path, dict[str, dict[str, object]]],
                                          args: tuple[str, ...], message: str) -> None:
    home, _ = stack
    result = aicloud(home, *args)
    assert result.returncode == (1 if args[:2] == ("jobs", "get") else 2)  # 2 = bad usage
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_job_name_is_refused(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    assert aicloud(home, "create", "job", "--name", "e2e-dup", "--", "true").returncode == 0
    again = aicloud(home, "create", "job", "--name", "e2e-dup", "--", "true")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_outside_event_flows_and_malformed_one_is_dead_lettered(
    stack: tuple[Path, dict[str, dict[str, object]]],
) -> None:
    home, components = stack

    async def publish() -> None:  # as a system outside the platform may: the publisher user
        nc = await nats.connect(str(components["nats"]["url"]), user=PUBLISHER,
                                password=password_file(home, PUBLISHER).read_text().strip(),
                                inbox_prefix=inbox_prefix(PUBLISHER))
        js = nc.jetstream()
        good = {"tenant": "legal", "job_id": "e2e-outside", "command": ["true"], "source": "erp"}
        await js.publish("aicloud.jobs.requested.v1", json.dumps(good).encode())
        await js.publish("aicloud.jobs.requested.v1", b'{"tenant": "legal", "gpus": "many"}')
        await nc.close()

    asyncio.run(publish())
    deadline = time.monotonic() + 30
    job: dict[str, object] = {}
    while time.monotonic() < deadline:
        got = aicloud(home, "jobs", "get", "e2e-outside", "-o", "json")
        if got.returncode == 0 and (job := json.loads(got.stdout))["status"] == "completed":
            break
        time.sleep(0.3)
    assert job.get("status") == "completed", job
    metrics_url = f"{components['observability-collector']['url']}/metrics"
    while time.monotonic() < deadline:
        metrics = httpx.get(metrics_url).text
        series = 'aicloud_dead_letters_total{reason="invalid_schema",subject="aicloud.jobs.requested.v1"}'
        if series in metrics:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the malformed event never reached the dead-letter subject")
    ready = httpx.get(f"{components['quota']['url']}/readyz")
    assert ready.status_code == 200  # the consumer survived the bad message


def test_a_wrong_api_key_is_refused(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    env = {**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_API_KEY": "ak_dead_beef"}
    result = subprocess.run([sys.executable, "-m", "aicloud", "jobs", "list"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "401: invalid or revoked API key" in result.stderr


def test_job_logs_follow_and_cancel(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    script = "import time\nfor i in range(3):\n    print('step', i, flush=True); time.sleep(0.3)"
    assert aicloud(home, "create", "job", "--name", "e2e-logs", "--", "python3", "-c", script).returncode == 0
    logs = aicloud(home, "jobs", "logs", "e2e-logs", "-f")
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["step 0", "step 1", "step 2"]

    assert aicloud(home, "create", "job", "--name", "e2e-cancel", "--", "sleep", "300").returncode == 0
    deadline = time.monotonic() + 30
    while json.loads(aicloud(home, "jobs", "get", "e2e-cancel", "-o", "json").stdout)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelled = aicloud(home, "jobs", "cancel", "e2e-cancel", "-o", "json")
    assert cancelled.returncode == 0, cancelled.stderr
    job = json.loads(cancelled.stdout)
    assert job["status"] == "terminated" and job["reason"] == "cancelled"
    again = aicloud(home, "jobs", "cancel", "e2e-cancel")
    assert again.returncode == 2 and "already ended" in again.stderr


def test_a_preempted_spot_job_resumes_from_its_checkpoint(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    created = aicloud(home, "create", "job", "--name", "e2e-spot", "--dataset",
                      "projects/legal-rag/datasets/v2", "--param", "epochs=25",
                      "--param", "epoch_pause=0.1", "--", "python3", str(ROOT / "examples" / "train.py"))
    assert created.returncode == 0, created.stderr
    checkpoint = home / "jobs" / "legal" / "e2e-spot" / "checkpoints" / "checkpoint.json"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() or json.loads(checkpoint.read_text())["epoch"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    preempted = aicloud(home, "dev", "preempt", "e2e-spot")
    assert preempted.returncode == 0 and "resumes from its checkpoint" in " ".join(preempted.stdout.split())
    done = aicloud(home, "jobs", "wait", "e2e-spot", "-o", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "completed", done.stderr
    log = (home / "jobs" / "legal" / "e2e-spot" / "job.log").read_text()
    assert "resuming from checkpoint at epoch" in log and log.count("epoch 25/25") == 1
    missing = aicloud(home, "dev", "preempt", "no-such-job")
    assert missing.returncode == 1 and "no running job 'no-such-job'" in missing.stderr


def test_demo_walks_the_golden_path(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    result = aicloud(home, "demo", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.split())  # undo the console's line wrapping
    assert "completed -> model clause-risk v" in out
    assert "MLflow: params epochs=15, lr=0.1, seed=0; run " in out
    assert "terminated (max_runtime)" in out
    assert "16 GPUs -> rejected: more than 4 GPUs needs manager approval" in out
    assert "team research reads legal's dataset -> rejected" in out
    assert "reason=invalid_schema" in out
    assert "streamed: The answer is forty two" in out
    assert "the provider received: 'Summarise the clause for [EMAIL]'" in out
    assert "fell back, served by fake-claude" in out
    assert "[200, 200, 429]" in out
    assert "events for the above: 45" in out
    for what, limit in (("an outbound connection", "network"), ("a fork bomb", "pids"),
                        ("a write outside the workspace", "read_only")):
        assert f"{what} -> exit" in out and f"stopped by the {limit} limit" in out, what
    assert "succeeded (answered)" in out and "revenue: mean 1112.50" in out
    assert "Temporal UI" in out


def test_logs_command_shows_a_component_log(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    result = aicloud(home, "dev", "logs", "quota", "-n", "200")
    assert result.returncode == 0
    assert "service.started" in result.stdout
    missing = aicloud(home, "dev", "logs", "nope")
    assert missing.returncode == 1 and "no log for 'nope'" in missing.stderr


def test_router_keys_are_managed_from_the_cli(stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    created = aicloud(home, "router", "keys", "create", "--team", "research", "--name", "notebook",
                      "--model", "gpt-4o-mini", "--rpm", "60", "-o", "json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["key"].startswith("vk_") and key["rpm"] == 60 and key["models"] == ["gpt-4o-mini"]
    listed = json.loads(aicloud(home, "router", "keys", "list", "--team", "research", "-o", "json").stdout)
    assert key["key_id"] in [k["key_id"] for k in listed] and key["key"] not in json.dumps(listed)
    answer = httpx.post(f"{components['inference-router']['url']}/v1/chat/completions", timeout=10,
                        headers={"authorization": f"Bearer {key['key']}"},
                        json={"model": "claude-haiku", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 403 and "may use: gpt-4o-mini" in answer.json()["error"]["message"]
    bad = aicloud(home, "router", "keys", "create", "--team", "research", "--budget-usd", "-5")
    assert bad.returncode == 2 and "budget_usd" in bad.stderr
    revoked = aicloud(home, "router", "keys", "revoke", key["key_id"])
    assert revoked.returncode == 0
    routes = aicloud(home, "router", "routes")
    assert routes.returncode == 0 and "flaky-gpt" in routes.stdout


def _publish_usage(components: dict[str, dict[str, object]], *events: UsageRecorded) -> None:
    async def send() -> None:
        nc = await nats.connect(**nats_login(components))
        for event in events:
            await nc.jetstream().publish(event.SUBJECT, event.model_dump_json().encode(),
                                         headers={"Nats-Msg-Id": str(event.event_id)})
        await nc.close()
    # in a thread of its own: the caller may be inside Playwright's event loop
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, send()).result()


def _gpu_hours(team: str, hours: int, resource: str) -> UsageRecorded:
    start = datetime.now(UTC).replace(day=2, hour=0, minute=0, second=0, microsecond=0)
    return UsageRecorded(tenant=team, kind="training", resource_id=resource, gpu_type="h100-80gb",
                         gpus_requested=1, started_at=start, ended_at=start + timedelta(hours=hours))


def test_an_error_burst_pages_through_prometheus_and_alertmanager_onto_the_bus(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    """Real Prometheus evaluates the SLO rules on the router's real counters; its fast-burn page
    goes through real Alertmanager to the collector's webhook and onto the bus, with its runbook;
    `aicloud slo status` shows the budget burning and the page."""
    home, components = stack
    if "alertmanager" not in components or "prometheus" not in components:
        pytest.skip("needs Debian's prometheus and prometheus-alertmanager (.ci/run installs them)")
    key = json.loads((home / "router-keys.json").read_text())["legal"]
    router = f"{components['inference-router']['url']}/v1/chat/completions"
    burst_until, codes = time.monotonic() + 8, []
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
        while time.monotonic() < burst_until:  # several scrapes see the error counter grow
            for model in ("broken-gpt", "gpt-4o-mini"):
                codes.append(http.post(router, json={
                    "model": model, "messages": [{"role": "user", "content": "hi"}]}).status_code)
            time.sleep(0.2)
    assert 200 in codes and any(code >= 500 for code in codes), codes
    fired = asyncio.run(_alerts_fired(nats_login(components), "router-availability", within_s=60))
    assert fired["alert"] == "SLOErrorBudgetBurnFast" and fired["severity"] == "critical"
    assert fired["labels"]["service"] == "inference-router"
    assert fired["runbook_url"].endswith("runbooks/slos.md#router-availability")
    status = aicloud(home, "slo", "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    found = json.loads(status.stdout)
    row = next(r for r in found["slos"] if r["slo"] == "router-availability")
    assert found["prometheus"]["reachable"] is True
    assert row["error_budget_left"] < 0 and row["burn_rate_1h"] > 14.4  # a third of requests failed
    assert "SLOErrorBudgetBurnFast" in {a["alert"] for a in row["alerts"]}
    table = aicloud(home, "slo", "status")
    assert "router-availability" in table.stdout and "runbook:" in table.stdout


async def _alerts_fired(login: dict[str, Any], slo: str, *, within_s: float) -> dict[str, Any]:
    nc = await nats.connect(**login)
    try:
        sub = await nc.jetstream().subscribe("aicloud.alerts.fired.v1", deliver_policy=DeliverPolicy.ALL)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(deadline - time.monotonic(), 0.1))
            except nats.errors.TimeoutError:
                break
            event: dict[str, Any] = json.loads(msg.data)
            if event["labels"].get("slo") == slo and event["alert"] == "SLOErrorBudgetBurnFast":
                return event
        raise AssertionError(f"no SLOErrorBudgetBurnFast page for {slo} on the bus within {within_s} s")
    finally:
        await nc.close()


def test_the_observability_page_shows_models_slos_and_the_page_live_in_a_browser(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    """Real Chromium on /observability: the firing page and the burning SLO from the burst, the
    models' traffic, and a model that gets traffic after the page loaded, without a reload."""
    from playwright.sync_api import sync_playwright

    home, components = stack
    if "prometheus" not in components:
        pytest.skip("needs Debian's prometheus (.ci/run installs it)")
    key = json.loads((home / "router-keys.json").read_text())["legal"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{components['observability-collector']['url']}/observability")
        page.wait_for_selector("#live.on", timeout=15_000)
        page.wait_for_selector('tr[data-slo="router-availability"].firing', timeout=30_000)
        assert "SLOErrorBudgetBurnFast" in page.locator("#alerts").inner_text()
        assert page.locator('#alerts a[href*="slos.md#router-availability"]').count() >= 1
        with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            for _ in range(5):  # a model the page has not shown yet
                http.post(f"{components['inference-router']['url']}/v1/chat/completions",
                          json={"model": "strict-gpt", "messages": [{"role": "user", "content": "hi"}]})
                time.sleep(1)
        page.wait_for_selector('tr[data-model="strict-gpt"]', timeout=30_000)
        tokens = page.locator('tr[data-model="strict-gpt"] .tokens').inner_text()
        assert float(tokens) > 0
        browser.close()


def test_the_bill_dashboard_updates_live_in_a_browser(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    """Real Chromium: the page shows research's spend, then the new total once usage arrives,
    without a reload."""
    from playwright.sync_api import sync_playwright

    _, components = stack
    url = f"{components['cost-ledger']['url']}/bill"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#live.on", timeout=15_000)  # the event stream is connected
        before = page.locator('tr[data-team="research"] .spent')
        start_text = before.inner_text() if before.count() else "$0.00"
        _publish_usage(components, _gpu_hours("research", 10, "dash-1"))  # 10 x $6.88
        expected = f"${float(start_text.strip('$').replace(',', '')) + 68.80:,.2f}"
        page.wait_for_function(
            "([sel, want]) => document.querySelector(sel)?.textContent === want",
            arg=['tr[data-team="research"] .spent', expected], timeout=15_000)
        assert "dash-1" in page.locator("#resources").inner_text()
        assert page.locator("#chart rect").count() >= 1
        browser.close()


def test_a_budget_at_100_percent_with_block_refuses_the_next_job(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, components = stack
    bad = aicloud(home, "budgets", "set", "--team", "research", "--amount", "-5")
    assert bad.returncode == 2 and "amount_usd" in bad.stderr
    done = aicloud(home, "budgets", "set", "--team", "research", "--amount", "50", "--action", "block")
    assert done.returncode == 0, done.stderr
    _publish_usage(components, _gpu_hours("research", 8, "budget-1"))  # $55.04 > $50
    for _ in range(50):
        refused = aicloud(home, "create", "job", "--team", "research", "--gpus", "1", "--wait",
                          "-o", "json", "--", "true")
        if "budget" in refused.stdout:
            break
        time.sleep(0.3)
    assert refused.returncode == 1
    assert "budget 'research-monthly' is exhausted" in json.loads(refused.stdout)["reason"]
    bill = aicloud(home, "bill", "--team", "research", "--by", "kind", "-o", "json")
    assert bill.returncode == 0, bill.stderr
    assert Decimal(json.loads(bill.stdout)["total_usd"]) >= Decimal("55.04")
    csv_bill = aicloud(home, "bill", "--team", "research", "--by", "resource_id", "-o", "csv")
    assert csv_bill.stdout.splitlines()[0] == "resource_id,usd" and "budget-1" in csv_bill.stdout
    raised = aicloud(home, "budgets", "set", "--team", "research", "--amount", "100000", "--action", "block")
    assert raised.returncode == 0
    for _ in range(50):
        again = aicloud(home, "create", "job", "--team", "research", "--gpus", "1", "--wait", "--", "true")
        if again.returncode == 0:
            break
        time.sleep(0.3)
    assert again.returncode == 0, again.stderr  # the raise lifted the block


# Stops the module's stack: keep it the last test here.
def test_sandboxes_from_the_cli(stack: tuple[Path, dict[str, dict[str, object]]], tmp_path: Path) -> None:
    home, _ = stack
    created = aicloud(home, "sandboxes", "create", "--template", "python", "-o", "json")
    assert created.returncode == 0, created.stderr
    box = json.loads(created.stdout)["sandbox_id"]
    (tmp_path / "in.txt").write_text("hello sandbox\n")
    put = aicloud(home, "sandboxes", "files", box, "in.txt", "--put", str(tmp_path / "in.txt"))
    assert put.returncode == 0, put.stderr
    ran = aicloud(home, "sandboxes", "exec", box, "--", "python3", "-c",
                  "import numpy; print(open('in.txt').read().upper(), numpy.__version__)")
    assert ran.returncode == 0 and "HELLO SANDBOX" in ran.stdout, ran.stdout + ran.stderr
    failed = aicloud(home, "sandboxes", "exec", box, "--code", "import sys; sys.exit(7)")
    assert failed.returncode == 7
    limited = aicloud(home, "sandboxes", "exec", box, "--timeout", "1", "--", "sleep", "30")
    assert limited.returncode != 0 and "timeout limit" in limited.stderr
    assert aicloud(home, "sandboxes", "delete", box).returncode == 0
    gone = aicloud(home, "sandboxes", "exec", box, "--", "true")
    assert gone.returncode == 1 and "gone" in gone.stderr


def test_the_example_agent_runs_and_its_trace_is_readable(
        stack: tuple[Path, dict[str, dict[str, object]]]) -> None:
    home, _ = stack
    env = {**os.environ, "AICLOUD_HOME": str(home)}
    example = subprocess.run([sys.executable, "examples/data_analysis_agent.py", "--approve"], env=env,
                             capture_output=True, text=True, timeout=180)
    assert example.returncode == 0, example.stdout + example.stderr
    assert "citations: mean" in example.stdout and "approving run_python" in example.stdout
    run_id = example.stdout.split("agent run ", 1)[1].split()[0]
    trace = aicloud(home, "agents", "trace", run_id, "-o", "json")
    steps = json.loads(trace.stdout)["steps"]
    assert [s["kind"] for s in steps] == ["state", "llm", "approval", "decision", "tool", "llm", "state"]
    table = aicloud(home, "agents", "trace", run_id)
    assert "run_python" in table.stdout and "succeeded" in table.stdout
    via_cli = aicloud(home, "agents", "run", "--max-steps", "1", "Summarise nothing")
    assert via_cli.returncode == 1 and "stopped (max_steps)" in via_cli.stdout
    rotated = aicloud(home, "agents", "rotate-keys")
    assert rotated.returncode == 0 and "with master key k1" in rotated.stdout, rotated.stderr


def test_down_leaves_nothing_running_and_up_resumes_with_same_data(
    stack: tuple[Path, dict[str, dict[str, object]]],
) -> None:
    home, components = stack
    pids = [int(str(row["pid"])) for row in components.values()]
    down = aicloud(home, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert not [pid for pid in pids if psutil.pid_exists(pid)
                and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert processes_under(home) == []
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
    sandboxes = f"/var/tmp/aicloud-sandboxes-{digest}"
    assert not [p for p in psutil.process_iter(["cmdline"]) if sandboxes in " ".join(p.info["cmdline"] or [])]
    status = aicloud(home, "dev", "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout) == []

    again = aicloud(home, "dev", "up", "--detach")
    assert again.returncode == 0, again.stdout + again.stderr
    job = aicloud(home, "jobs", "get", "e2e-train", "-o", "json")
    assert json.loads(job.stdout)["status"] == "completed"  # same data after restart
    assert aicloud(home, "models", "get", "clause-risk").returncode == 0
    aicloud(home, "dev", "down")
    assert processes_under(home) == []
