"""quota decides a fetch of job requests in one transaction (services/quota/admission.py): on
the real bus and Postgres, a burst gets exactly the decisions one-by-one would give, and a
request that cannot be decided is retried and dead-lettered alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import pytest
from sqlalchemy import text

from contracts import JobAdmitted, JobQueued, JobRejected, JobRequested
from services.kit.runtime import Service
from services.quota.admission import JobAdmission
from services.quota.app import build
from services.quota.settings import QuotaSettings
from tests.integration.test_delivery import next_dead_letter

pytestmark = pytest.mark.integration


@pytest.fixture
async def quota_factory(service_env: dict[str, str], prefix: str
                        ) -> AsyncIterator[Callable[..., tuple[Service, Service]]]:
    """(quota, feeder): quota built but not started; the feeder publishes on its bus, so a burst
    is in the stream before quota fetches it, and arrives in one fetch."""
    made: list[Service] = []

    def make(**extra: Any) -> tuple[Service, Service]:
        settings = QuotaSettings(**service_env, db_schema=f"{prefix}_quota", **extra)
        quota, feeder = build(settings), Service(settings)
        made.extend([quota, feeder])
        return quota, feeder

    yield make
    for service in made:
        await service.stop()
    await made[0].db.drop_schema()
    await made[0].db.dispose()


def job(job_id: str, gpus: int, team: str = "legal", product: str = "fine-tune",
        image: str | None = None) -> JobRequested:
    return JobRequested(tenant=team, job_id=job_id, command=["x"], gpus=gpus, product=product,
                        image=image)


async def collect(nc: nats.NATS, prefix: str, kind: type[Any], count: int) -> list[Any]:
    sub = await nc.jetstream().subscribe(f"{prefix}.{kind.SUBJECT}", ordered_consumer=True)
    try:
        return [kind.model_validate_json((await sub.next_msg(timeout=10)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_a_burst_gets_the_decisions_one_by_one_would_give(
        quota_factory: Callable[..., tuple[Service, Service]], nats_url: str, prefix: str) -> None:
    quota, feeder = quota_factory(team_gpu_quotas={"legal": 3})
    await feeder.bus.connect()
    a = job("a", 2)
    for event in (a, job("b", 2), job("c", 1), job("r", 16, team="research"),
                  job("d", 1, product="no-such-product")):
        await feeder.bus.publish(event)
    # the same request again under another message id: only the inbox can stop it
    await feeder.bus.publish_raw(a.SUBJECT, a.model_dump_json().encode(), message_id="dup")
    await quota.start()
    nc = await nats.connect(nats_url)
    admitted = await collect(nc, prefix, JobAdmitted, 1)
    queued = await collect(nc, prefix, JobQueued, 2)
    rejected = await collect(nc, prefix, JobRejected, 2)
    assert [e.job_id for e in admitted] == ["a"]
    # b does not fit next to a; c would, but b waits ahead of it: FIFO inside the batch too
    assert [(e.job_id, e.position) for e in queued] == [("b", 1), ("c", 2)]
    assert "1 free, 2 needed" in queued[0].reason
    reasons = {e.job_id: e.reason for e in rejected}
    assert "manager approval" in reasons["r"] and "product does not exist" in reasons["d"]
    async with quota.db.transaction() as session:
        held = (await session.execute(text(
            "SELECT resource_id, gpus FROM allocations WHERE released_at IS NULL"))).all()
        waiting = (await session.execute(text("SELECT job_id FROM queue ORDER BY seq"))).all()
        decided = (await session.execute(text(
            "SELECT count(*), count(DISTINCT decided_at) FROM decisions"))).one()
    assert [tuple(row) for row in held] == [("a", 2)]
    assert [row[0] for row in waiting] == ["b", "c"]
    # five decisions (the duplicate made none), all in one transaction (one now())
    assert tuple(decided) == (5, 1)
    await nc.close()


async def test_a_request_that_cannot_be_decided_fails_alone(
        quota_factory: Callable[..., tuple[Service, Service]], nats_url: str, prefix: str) -> None:
    quota, feeder = quota_factory(max_deliver=2, redelivery_backoff_s=(0.05,))
    admission = next(sub.process_batch for sub in quota.bus._subscriptions
                     if isinstance(sub.process_batch, JobAdmission))
    decide = admission._decide

    def broken(event: JobRequested, *args: Any) -> int:
        if event.job_id == "boom":
            raise RuntimeError("cannot decide this one")
        return decide(event, *args)

    admission._decide = broken  # type: ignore[method-assign]
    await feeder.bus.connect()
    for job_id in ("ok-1", "boom", "ok-2"):
        await feeder.bus.publish(job(job_id, 1))
    await quota.start()
    nc = await nats.connect(nats_url)
    assert sorted(e.job_id for e in await collect(nc, prefix, JobAdmitted, 2)) == ["ok-1", "ok-2"]
    dead = await next_dead_letter(nc, prefix, JobRequested.SUBJECT)
    assert JobRequested.model_validate_json(dead.payload).job_id == "boom"
    assert dead.reason == "handler_error" and "cannot decide this one" in dead.error
    async with quota.db.transaction() as session:
        decided = (await session.execute(text(
            "SELECT resource_id FROM decisions ORDER BY resource_id"))).all()
    assert [row[0] for row in decided] == ["ok-1", "ok-2"]  # each once; nothing for boom
    await nc.close()


async def test_on_kubernetes_only_pinned_and_scanned_images_are_admitted(
        quota_factory: Callable[..., tuple[Service, Service]], nats_url: str, prefix: str) -> None:
    quota, feeder = quota_factory(backend="kubernetes")
    scanned = "registry.example.com/aicloud/python-job@sha256:" + (
        "3f1e7c5a9b2d4e6f8a0c1b3d5e7f9a2c4b6d8e0f1a3c5e7b9d2f4a6c8e0b1d3f")  # policies/ file
    await feeder.bus.connect()
    await feeder.bus.publish(job("k-ok", 0, product="cpu-small", image=scanned))
    await feeder.bus.publish(job("k-tag", 0, product="cpu-small",
                                 image="registry.example.com/aicloud/python-job:latest"))
    await quota.start()
    nc = await nats.connect(nats_url)
    [admitted] = await collect(nc, prefix, JobAdmitted, 1)
    [rejected] = await collect(nc, prefix, JobRejected, 1)
    assert admitted.job_id == "k-ok" and admitted.request.image == scanned
    assert rejected.job_id == "k-tag" and rejected.policy_ids == ["jobs.image-pinned-and-scanned"]
    assert "pinned by digest" in rejected.reason
    await nc.close()
