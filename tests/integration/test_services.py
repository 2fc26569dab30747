"""Each of the seven services, built by its own ``build()``, on real NATS, Postgres and Temporal."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from sqlalchemy import text

from contracts import (
    CancelJob,
    CreateSandbox,
    DeadLetter,
    EndpointReady,
    Envelope,
    InferenceCompleted,
    JobAdmitted,
    JobCompleted,
    JobQueued,
    JobRejected,
    JobRequested,
    JobTerminated,
    UsageRecorded,
)
from services.agent_runtime.app import build as build_agent_runtime
from services.agent_runtime.settings import AgentRuntimeSettings
from services.catalog.app import build as build_catalog
from services.catalog.settings import CatalogSettings
from services.cost_ledger.app import build as build_cost_ledger
from services.cost_ledger.settings import CostLedgerSettings
from services.inference_router.app import build as build_router
from services.inference_router.settings import RouterSettings
from services.kit.runtime import Service
from services.observability_collector.app import build as build_collector
from services.observability_collector.settings import CollectorSettings
from services.provisioner.app import build as build_provisioner
from services.provisioner.settings import ProvisionerSettings
from services.quota.app import build as build_quota
from services.quota.settings import QuotaSettings

pytestmark = pytest.mark.integration

# (build, settings class, an input subject it consumes, its own table to check)
SERVICES: dict[str, tuple[Callable[[Any], Service], type, str, str | None]] = {
    "catalog": (build_catalog, CatalogSettings, JobAdmitted.SUBJECT, "jobs"),
    "quota": (build_quota, QuotaSettings, JobRequested.SUBJECT, "allocations"),
    "provisioner": (build_provisioner, ProvisionerSettings, JobAdmitted.SUBJECT, None),
    "cost-ledger": (build_cost_ledger, CostLedgerSettings, UsageRecorded.SUBJECT, "ledger_entries"),
    "inference-router": (build_router, RouterSettings, EndpointReady.SUBJECT, "endpoint_targets"),
    "agent-runtime": (build_agent_runtime, AgentRuntimeSettings, CreateSandbox.SUBJECT, "sandboxes"),
    "observability-collector": (build_collector, CollectorSettings, InferenceCompleted.SUBJECT, None),
}


@pytest.fixture
async def make_service(service_env: dict[str, str], prefix: str, temporal_env: Any,
                       tmp_path: Any) -> AsyncIterator[Callable[..., Any]]:
    started: list[Service] = []

    async def make(name: str, **extra: Any) -> Service:
        build, settings_cls, _, _ = SERVICES[name]
        overrides = {**service_env, "db_schema": f"{prefix}_{name.replace('-', '_')}", **extra}
        if name == "provisioner":
            overrides["temporal_address"] = temporal_env.client.service_client.config.target_host
            overrides["task_queue"] = f"q-{prefix}"
            overrides["work_dir"] = str(tmp_path / "jobs")
        if name == "agent-runtime":
            overrides["sandbox_dir"] = f"/var/tmp/aicloud-tests/{prefix}"
            overrides["pools"] = False
        service = build(settings_cls(**overrides))
        await service.start()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stop()
        cleanup = Service(type(service.settings)(**service.settings.model_dump()))
        await cleanup.db.drop_schema()
        await cleanup.db.dispose()


async def http(service: Service, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=service.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.get(path)


@pytest.mark.parametrize("name", list(SERVICES))
async def test_service_is_healthy_ready_and_dead_letters_bad_input(
    make_service: Callable[..., Any], name: str, nats_url: str, prefix: str
) -> None:
    service = await make_service(name)
    assert (await http(service, "/healthz")).json() == {"status": "ok", "service": service.name}
    ready = await http(service, "/readyz")
    assert ready.status_code == 200, ready.text
    assert {"nats", "postgres"} <= set(ready.json()["checks"])
    _, _, subject, table = SERVICES[name]
    if table:
        async with service.db.transaction() as session:
            await session.execute(text(f"SELECT count(*) FROM {table}"))  # migrated

    nc = await nats.connect(nats_url)
    dlq = await nc.jetstream().subscribe(f"{prefix}.aicloud.dlq.{subject}", ordered_consumer=True)
    await nc.jetstream().publish(f"{prefix}.{subject}", b'{"tenant": "legal"}')
    dead = DeadLetter.model_validate_json((await dlq.next_msg(timeout=10)).data)
    await nc.close()
    assert dead.reason == "invalid_schema" and dead.consumer.startswith(service.name)
    assert "field required" in dead.error.lower()
    metrics = (await http(service, "/metrics")).text
    assert "aicloud_events_consumed_total" in metrics and 'outcome="dead_lettered"' in metrics
    assert (await http(service, "/readyz")).status_code == 200  # still serving


async def test_readyz_names_a_dependency_that_is_down(make_service: Callable[..., Any]) -> None:
    from services.kit.db import Database

    service = await make_service("quota")
    unreachable = Database(url="postgresql://postgres@127.0.0.1:1/x", schema="x")
    service.checks["postgres"] = unreachable.ping
    ready = await http(service, "/readyz")
    await unreachable.dispose()
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["checks"]["postgres"].startswith("error:")
    assert ready.json()["checks"]["nats"] == "ok"


async def next_event(nc: nats.NATS, prefix: str, message: type[Envelope], timeout: float = 10) -> Any:
    sub = await nc.jetstream().subscribe(f"{prefix}.{message.SUBJECT}", ordered_consumer=True)
    try:
        return message.model_validate_json((await sub.next_msg(timeout=timeout)).data)
    finally:
        await sub.unsubscribe()


async def test_quota_queues_fifo_admits_when_capacity_frees_and_never_drifts(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    quota = await make_service("quota", team_gpu_quotas={"legal": 4, "research": 2})
    nc = await nats.connect(nats_url)
    admitted_sub = await nc.jetstream().subscribe(f"{prefix}.{JobAdmitted.SUBJECT}", ordered_consumer=True)
    queued_sub = await nc.jetstream().subscribe(f"{prefix}.{JobQueued.SUBJECT}", ordered_consumer=True)

    async def request(job_id: str, gpus: int, team: str = "legal") -> JobRequested:
        event = JobRequested(tenant=team, job_id=job_id, command=["x"], gpus=gpus, product="fine-tune")
        await quota.bus.publish(event)
        return event

    async def admitted() -> JobAdmitted:
        return JobAdmitted.model_validate_json((await admitted_sub.next_msg(timeout=10)).data)

    async def queued() -> JobQueued:
        return JobQueued.model_validate_json((await queued_sub.next_msg(timeout=10)).data)

    first = await request("q-a", 3)
    a = await admitted()
    assert a.job_id == "q-a" and a.policy_ids == ["jobs.allow-submit", "quota.gpu-per-team"]
    assert a.reason == "team legal uses 0 of 4 GPUs; this job's 3 fit"
    await request("q-b", 2)
    b = await queued()
    assert (b.job_id, b.position) == ("q-b", 1) and "1 free, 2 needed" in b.reason
    await request("q-c", 1)  # would fit, but q-b waits ahead of it
    c = await queued()
    assert (c.job_id, c.position) == ("q-c", 2)

    # Duplicates must not move the accounting: the same request again, a redelivery.
    await quota.bus.publish(first)
    await quota.bus.publish_raw(first.SUBJECT, first.model_dump_json().encode(), message_id="dup")

    done = JobCompleted(tenant="legal", job_id="q-a", duration_s=1)
    await quota.bus.publish(done)
    assert [(await admitted()).job_id, (await admitted()).job_id] == ["q-b", "q-c"]
    await quota.bus.publish_raw(done.SUBJECT, done.model_dump_json().encode(), message_id="dup2")
    await quota.bus.publish(JobCompleted(tenant="legal", job_id="q-a", duration_s=1))

    rejected_sub = await nc.jetstream().subscribe(f"{prefix}.{JobRejected.SUBJECT}", ordered_consumer=True)
    await request("q-r", 3, team="research")
    rejected = JobRejected.model_validate_json((await rejected_sub.next_msg(timeout=10)).data)
    assert rejected.job_id == "q-r" and "whole quota is 2" in rejected.reason
    await asyncio.sleep(0.5)
    async with quota.db.transaction() as session:
        held = (await session.execute(text(
            "SELECT resource_id, gpus FROM allocations WHERE released_at IS NULL ORDER BY resource_id"
        ))).all()
        waiting = (await session.execute(text("SELECT count(*) FROM queue"))).scalar_one()
    assert [tuple(row) for row in held] == [("q-b", 2), ("q-c", 1)]  # reserved == running
    assert waiting == 0
    with pytest.raises(nats.errors.TimeoutError):
        await admitted_sub.next_msg(timeout=0.5)  # nothing was admitted twice
    await nc.close()


async def test_a_queued_job_can_be_cancelled(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    quota = await make_service("quota", team_gpu_quotas={"legal": 1})
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(f"{prefix}.{JobTerminated.SUBJECT}", ordered_consumer=True)
    for job_id in ("c-run", "c-wait"):
        await quota.bus.publish(JobRequested(tenant="legal", job_id=job_id, command=["x"], gpus=1,
                                             product="fine-tune"))
    await asyncio.sleep(0.5)
    await quota.bus.publish(CancelJob(tenant="legal", job_id="c-wait"))
    terminated = JobTerminated.model_validate_json((await sub.next_msg(timeout=10)).data)
    assert (terminated.job_id, terminated.reason) == ("c-wait", "cancelled")
    async with quota.db.transaction() as session:
        assert (await session.execute(text("SELECT count(*) FROM queue"))).scalar_one() == 0
    await nc.close()


async def catalog_with_keys(
    make_service: Callable[..., Any], tmp_path: Path
) -> tuple[Service, dict[str, str]]:
    keys_file = tmp_path / "keys.json"
    catalog = await make_service("catalog", demo_keys_file=keys_file)
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"
    return catalog, json.loads(keys_file.read_text())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_catalog_api_submits_through_the_outbox(
    make_service: Callable[..., Any], nats_url: str, prefix: str, tmp_path: Path
) -> None:
    catalog, keys = await catalog_with_keys(make_service, tmp_path)
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(f"{prefix}.{JobRequested.SUBJECT}", ordered_consumer=True)
    transport = httpx.ASGITransport(app=catalog.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        created = await client.post("/v1/jobs", json={"name": "api-1", "command": ["true"]},
                                    headers=bearer(keys["legal"]))
        assert created.status_code == 202, created.text
        assert created.json()["team"] == "legal"
        bad = await client.post("/v1/jobs", json={"command": []}, headers=bearer(keys["legal"]))
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        problem = bad.json()
        assert problem["status"] == 422 and problem["title"] == "Unprocessable Entity"
        assert problem["errors"][0]["loc"] == ["body", "command"]
        assert problem["detail"].startswith("the request is invalid: command:")
        not_json = await client.post("/v1/jobs", content=b"{oops", headers={
            **bearer(keys["legal"]), "content-type": "application/json"})
        assert not_json.status_code == 422
        # a hyper-parameter becomes AICLOUD_PARAM_<KEY>: a key that cannot be a variable name, two
        # keys that would be the same variable, or too many are refused here, not at the job's start
        for params, where in (({"lr=0.1": "x"}, "lr=0.1"), ({"a b": "x"}, "a b"), ({"1st": "x"}, "1st"),
                              ({"lr": "1", "LR": "2"}, "AICLOUD_PARAM_LR"),
                              ({f"p{i}": "x" for i in range(65)}, "params")):
            refused = await client.post("/v1/jobs", json={"command": ["true"], "params": params},
                                        headers=bearer(keys["legal"]))
            assert refused.status_code == 422, (params, refused.text)
            assert where in refused.text and refused.json()["errors"][0]["loc"][:2] == ["body", "params"]
        long_value = await client.post("/v1/jobs", json={"command": ["true"], "params": {"x": "v" * 4097}},
                                       headers=bearer(keys["legal"]))
        assert long_value.status_code == 422
    event = JobRequested.model_validate_json((await sub.next_msg(timeout=10)).data)
    assert event.job_id == "api-1" and event.tenant == "legal" and event.source == "catalog"
    await nc.close()


async def test_api_keys_decide_the_team_and_are_stored_hashed(
    make_service: Callable[..., Any], tmp_path: Path
) -> None:
    catalog, keys = await catalog_with_keys(make_service, tmp_path)
    assert set(keys) == {"legal", "research", "platform"}  # platform: the judge's spend (issue 18)
    transport = httpx.ASGITransport(app=catalog.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        missing = await client.post("/v1/jobs", json={"command": ["true"]})
        assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"] == "Bearer"
        forged = await client.get("/v1/jobs", headers=bearer("ak_0000_not-a-real-key"))
        assert forged.status_code == 401 and "invalid" in forged.json()["detail"]
        created = await client.post("/v1/jobs", json={"name": "mine", "command": ["true"]},
                                    headers=bearer(keys["legal"]))
        assert created.status_code == 202
        other = await client.get("/v1/jobs/mine", headers=bearer(keys["research"]))
        assert other.status_code == 404  # another team's key cannot see it
        assert (await client.get("/v1/jobs", headers=bearer(keys["research"]))).json() == []
        assert (await client.get("/v1/whoami", headers=bearer(keys["research"]))).json() == {
            "team": "research"}
    async with catalog.db.transaction() as session:
        stored = [row[0] for row in (await session.execute(text("SELECT key_hash FROM api_keys"))).all()]
    assert len(stored) == len(keys) and not set(stored) & set(keys.values())
    # A restart keeps the same keys: nothing is re-issued while the stored hash still matches.
    from services.catalog.app import seed_keys

    await seed_keys(catalog, tmp_path / "keys.json", catalog.settings.policy_dir)  # type: ignore[attr-defined]
    assert json.loads((tmp_path / "keys.json").read_text()) == keys


async def test_cost_ledger_appends_usage_once(make_service: Callable[..., Any]) -> None:
    from datetime import UTC, datetime

    ledger = await make_service("cost-ledger")
    usage = UsageRecorded(tenant="legal", kind="training", resource_id="j1", gpus_requested=2,
                          started_at=datetime(2026, 11, 1, tzinfo=UTC),
                          ended_at=datetime(2026, 11, 1, 1, tzinfo=UTC))
    await ledger.bus.publish(usage)
    await ledger.bus.publish_raw(usage.SUBJECT, usage.model_dump_json().encode(), message_id="again")
    async with asyncio.timeout(10):
        while True:
            async with ledger.db.transaction() as session:
                rows = (await session.execute(text("SELECT quantity, usd FROM ledger_entries"))).all()
            if rows:
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    async with ledger.db.transaction() as session:
        rows = (await session.execute(text("SELECT quantity, usd FROM ledger_entries"))).all()
    # 2 GPUs x 3600 s, no GPU type: charged the fallback rate ($6.88/GPU-hour) and flagged
    assert [(row[0], row[1]) for row in rows] == [(7200, Decimal("13.76"))]


async def test_collector_counts_events_by_subject_and_team(
    make_service: Callable[..., Any]
) -> None:
    collector = await make_service("observability-collector")
    await collector.bus.publish(InferenceCompleted(
        tenant="legal", request_id="r1", key_id="k1", model="gpt", target="openai",
        tokens_in=10, tokens_out=32, latency_ms=120, status="ok"))
    series = 'aicloud_inference_tokens_total{direction="out",model="gpt",tenant="legal"} 32.0'
    async with asyncio.timeout(10):
        while series not in (await http(collector, "/metrics")).text:
            await asyncio.sleep(0.1)
    metrics = (await http(collector, "/metrics")).text
    events = 'aicloud_platform_events_total{subject="aicloud.inference.completed.v1",tenant="legal"}'
    assert f"{events} 1.0" in metrics


async def test_one_trace_spans_api_quota_provisioner_and_workflow(
    make_service: Callable[..., Any], tracing: Any, tmp_path: Path
) -> None:
    catalog, keys = await catalog_with_keys(make_service, tmp_path)
    await make_service("quota")
    await make_service("provisioner")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    transport = httpx.ASGITransport(app=catalog.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        created = await client.post(
            "/v1/jobs", json={"name": "traced-1", "command": ["true"]},
            headers={**bearer(keys["legal"]), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
        )
        assert created.status_code == 202
        async with asyncio.timeout(30):
            while (await client.get("/v1/jobs/traced-1", headers=bearer(keys["legal"]))
                   ).json()["status"] != "completed":
                await asyncio.sleep(0.1)
    names = set()
    for line in tracing.read_text().splitlines():
        span = json.loads(line)
        if span["trace_id"] == trace_id:
            names.add(span["name"])
    assert {"POST /v1/jobs", "aicloud.jobs.requested.v1 process", "aicloud.jobs.admitted.v1 process",
            "RunWorkflow:JobWorkflow", "RunActivity:run_job",
            "aicloud.jobs.completed.v1 process"} <= names, names


async def test_policies_reject_through_the_bus_and_the_decision_is_logged(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    quota = await make_service("quota")
    nc = await nats.connect(nats_url)
    # An outside system asks for 16 GPUs on another team's dataset: two policies say no.
    raw = {"tenant": "research", "job_id": "p-1", "command": ["x"], "gpus": 16,
           "product": "fine-tune", "dataset": "projects/legal-rag/datasets/v2"}
    sub = await nc.jetstream().subscribe(f"{prefix}.{JobRejected.SUBJECT}", ordered_consumer=True)
    await nc.jetstream().publish(f"{prefix}.{JobRequested.SUBJECT}", json.dumps(raw).encode())
    rejected = JobRejected.model_validate_json((await sub.next_msg(timeout=10)).data)
    await nc.close()
    assert rejected.job_id == "p-1" and rejected.tenant == "research"
    assert set(rejected.policy_ids) == {
        "jobs.gpus-need-manager-approval", "jobs.product-gpu-range",
        "jobs.dataset-from-authorised-project",
    }
    assert "more than 4 GPUs needs manager approval" in rejected.reason
    async with quota.db.transaction() as session:
        row = (await session.execute(text(
            "SELECT admitted, policy_ids, reason FROM decisions WHERE resource_id = 'p-1'"))).one()
        held = (await session.execute(text("SELECT count(*) FROM allocations"))).scalar_one()
    assert row.admitted is False and "jobs.dataset-from-authorised-project" in row.policy_ids
    assert held == 0  # a refused request reserves nothing


async def test_budget_pre_authorisation_reserves_and_releases(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    quota = await make_service("quota", team_budgets_usd={"legal": 100})
    nc = await nats.connect(nats_url)
    decisions = await nc.jetstream().subscribe(f"{prefix}.aicloud.jobs.*.v1", ordered_consumer=True)

    async def decide(job_id: str, **fields: Any) -> tuple[str, str]:
        await quota.bus.publish(JobRequested(tenant="legal", job_id=job_id, command=["x"],
                                             product="fine-tune", gpus=2, **fields))
        while True:
            msg = await decisions.next_msg(timeout=10)
            body = json.loads(msg.data)
            if body.get("job_id") == job_id and not msg.subject.endswith("requested.v1"):
                return msg.subject.split(".")[-2], body.get("reason", "")

    assert (await decide("b-1"))[0] == "admitted"  # up to $65.60 of $100
    outcome, reason = await decide("b-2")
    assert outcome == "rejected" and "$34.40 of $100.00 is left" in reason
    assert (await decide("b-3", max_runtime_s=3600))[0] == "admitted"  # $8.20 fits
    await quota.bus.publish(JobCompleted(tenant="legal", job_id="b-1", duration_s=60))
    await asyncio.sleep(0.5)
    assert (await decide("b-4"))[0] == "admitted"  # b-1's reservation was released
    await nc.close()


async def test_a_full_node_queues_other_teams_until_capacity_frees(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    quota = await make_service("quota", node_gpus=4)
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(f"{prefix}.aicloud.jobs.*.v1", ordered_consumer=True)

    async def outcome(job_id: str) -> str:
        while True:
            msg = await sub.next_msg(timeout=10)
            if json.loads(msg.data).get("job_id") == job_id and "requested" not in msg.subject \
                    and "completed" not in msg.subject:
                return msg.subject.split(".")[-2]

    await quota.bus.publish(JobRequested(tenant="legal", job_id="n-1", command=["x"],
                                         product="fine-tune", gpus=3))
    assert await outcome("n-1") == "admitted"
    await quota.bus.publish(JobRequested(tenant="research", job_id="n-2", command=["x"],
                                         product="fine-tune", gpus=2))
    assert await outcome("n-2") == "queued"  # research's own quota is free; the node is not
    await quota.bus.publish(JobCompleted(tenant="legal", job_id="n-1", duration_s=5))
    assert await outcome("n-2") == "admitted"  # legal's finished job let research in
    await nc.close()


async def test_an_exhausted_budget_blocks_new_work_until_it_is_raised(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    from datetime import UTC, datetime

    from contracts import BudgetChanged, BudgetExhausted

    await make_service("quota")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    period = datetime.now(UTC).strftime("%Y-%m")
    decided = await js.subscribe(f"{prefix}.aicloud.jobs.>", ordered_consumer=True)

    async def request(job_id: str) -> tuple[str, str]:
        job = JobRequested(tenant="legal", job_id=job_id, command=["true"], gpus=1, product="fine-tune")
        await js.publish(f"{prefix}.{job.SUBJECT}", job.model_dump_json().encode())
        while True:
            msg = await decided.next_msg(timeout=10)
            body = json.loads(msg.data)
            if body.get("job_id") == job_id and not msg.subject.endswith("requested.v1"):
                return msg.subject.split(".")[-2], body.get("reason", "")

    exhausted = BudgetExhausted(tenant="legal", budget_id="legal-monthly", period=period, action="block",
                                spent_usd=Decimal("512.40"), amount_usd=Decimal("500"))
    await js.publish(f"{prefix}.{exhausted.SUBJECT}", exhausted.model_dump_json().encode())
    await asyncio.sleep(1)
    outcome, reason = await request("after-exhausted")
    assert outcome == "rejected"
    assert "budget 'legal-monthly' is exhausted" in reason and "$512.40 of $500.00" in reason
    raised = BudgetChanged(tenant="legal", budget_id="legal-monthly", period=period, action="block",
                           amount_usd=Decimal("2000"), spent_usd=Decimal("512.40"))
    await js.publish(f"{prefix}.{raised.SUBJECT}", raised.model_dump_json().encode())
    await asyncio.sleep(1)
    outcome, _ = await request("after-raise")
    await nc.close()
    assert outcome == "admitted"


async def test_a_budget_that_says_stop_ends_the_teams_running_jobs_only(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    from datetime import UTC, datetime

    from contracts import BudgetExhausted, JobStarted

    await make_service("provisioner")
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    events = await js.subscribe(f"{prefix}.aicloud.jobs.>", ordered_consumer=True)
    for team, job_id in (("legal", "stop-legal"), ("research", "stop-research")):
        request = JobRequested(tenant=team, job_id=job_id, command=["sleep", "120"], gpus=0)
        admitted = JobAdmitted(tenant=team, job_id=job_id, request=request)
        await js.publish(f"{prefix}.{admitted.SUBJECT}", admitted.model_dump_json().encode())
    seen: dict[str, list[dict[str, Any]]] = {}

    async def until(pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(60):
            while not pred():
                msg = await events.next_msg(timeout=60)
                seen.setdefault(msg.subject.split(".")[-2], []).append(json.loads(msg.data))

    await until(lambda: len(seen.get("started", [])) == 2)
    stop = BudgetExhausted(tenant="legal", budget_id="legal-monthly", action="stop",
                           period=datetime.now(UTC).strftime("%Y-%m"), spent_usd=Decimal("101"),
                           amount_usd=Decimal("100"))
    await js.publish(f"{prefix}.{stop.SUBJECT}", stop.model_dump_json().encode())
    await until(lambda: bool(seen.get("terminated")))
    await asyncio.sleep(1)
    cancel = CancelJob(tenant="research", job_id="stop-research")
    await js.publish(f"{prefix}.{cancel.SUBJECT}", cancel.model_dump_json().encode())
    await until(lambda: len(seen.get("terminated", [])) == 2)
    await nc.close()
    first, second = seen["terminated"]
    assert (first["job_id"], first["reason"]) == ("stop-legal", "budget_exhausted")
    assert (second["job_id"], second["reason"]) == ("stop-research", "cancelled")
    assert {JobStarted.model_validate(s).job_id for s in seen["started"]} == {"stop-legal", "stop-research"}


async def test_quota_admits_against_the_engines_gpus_by_type_as_nodes_join_and_leave(
    make_service: Callable[..., Any], nats_url: str, prefix: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from contracts import ClusterCapacityChanged, GpuPoolCapacity

    quota = await make_service("quota", team_gpu_quotas={"legal": 32, "research": 32})
    nc = await nats.connect(nats_url)
    sub = await nc.jetstream().subscribe(f"{prefix}.aicloud.jobs.*.v1", ordered_consumer=True)
    now = datetime.now(UTC)

    async def report(at: datetime, h100: int, a100: int) -> None:
        await quota.bus.publish(ClusterCapacityChanged(
            tenant="platform", engine="ray", observed_at=at, pools=[
                GpuPoolCapacity(gpu_type="h100-80gb", total=h100, largest_node=8, nodes_alive=h100 // 8),
                GpuPoolCapacity(gpu_type="a100-80gb", total=a100, largest_node=2, nodes_alive=a100 // 2)]))

    async def decided(job_id: str) -> dict[str, Any]:
        while True:
            msg = await sub.next_msg(timeout=10)
            body = json.loads(msg.data)
            if body.get("job_id") == job_id and msg.subject.split(".")[-2] in (
                    "admitted", "queued", "rejected"):
                return {"outcome": msg.subject.split(".")[-2], **body}

    async def ask(job_id: str, gpus: int, gpu_type: str | None, team: str = "legal") -> dict[str, Any]:
        await quota.bus.publish(JobRequested(tenant=team, job_id=job_id, command=["x"],
                                             product="fine-tune", gpus=gpus, gpu_type=gpu_type))
        return await decided(job_id)

    await report(now, h100=8, a100=4)
    await asyncio.sleep(0.5)
    refused = await ask("c-big", 4, "a100-80gb")  # two 2-GPU nodes: 4 fit no single one
    assert refused["outcome"] == "rejected" and "largest a100-80gb node" in refused["reason"]
    assert refused["policy_ids"][-1] == "quota.cluster-capacity"
    assert (await ask("c-l4", 1, "l4-24gb"))["outcome"] == "rejected"  # not the product's type
    first = await ask("c-1", 4, "h100-80gb")
    assert first["outcome"] == "admitted" and first["gpu_type"] == "h100-80gb"
    assert (await ask("c-2", 4, "h100-80gb", team="research"))["outcome"] == "admitted"
    queued = await ask("c-3", 2, "h100-80gb")
    assert queued["outcome"] == "queued" and "8 of 8 in use" in queued["reason"]
    untyped = await ask("c-4", 2, None, team="research")  # fine-tune's first type offered: a100
    assert untyped["outcome"] == "admitted" and untyped["gpu_type"] == "a100-80gb"

    await report(now - timedelta(seconds=5), h100=16, a100=4)  # older than the one kept: ignored
    await asyncio.sleep(0.5)
    await report(now + timedelta(seconds=5), h100=16, a100=4)  # a second h100 node joined
    assert (await decided("c-3"))["outcome"] == "admitted"

    # the cluster stops answering: new work on it waits queued, GPUs or not, until it is back
    await quota.bus.publish(ClusterCapacityChanged(
        tenant="platform", engine="ray", observed_at=now + timedelta(seconds=10), reachable=False,
        pools=[GpuPoolCapacity(gpu_type="h100-80gb", total=16, largest_node=8, nodes_alive=2)]))
    await asyncio.sleep(0.5)
    waiting = await ask("c-down", 1, "h100-80gb", team="research")
    assert waiting["outcome"] == "queued" and "does not answer" in waiting["reason"]
    await quota.bus.publish(JobRequested(tenant="legal", job_id="c-cpu", command=["x"]))
    assert (await decided("c-cpu"))["outcome"] == "queued"
    await report(now + timedelta(seconds=15), h100=16, a100=4)
    assert {(await decided(j))["outcome"] for j in ("c-down", "c-cpu")} == {"admitted"}
    await nc.close()
