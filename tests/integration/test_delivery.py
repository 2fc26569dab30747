"""The kit's delivery guarantees against real NATS JetStream and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats
import pytest
from sqlalchemy import text

from contracts import DeadLetter, Envelope, JobRequested, UsageRecorded
from services.kit.bus import Bus
from services.kit.db import driver
from services.kit.inbox import UnitOfWork, processed_count
from services.kit.runtime import Service
from services.kit.settings import ServiceSettings

pytestmark = pytest.mark.integration


class KitSettings(ServiceSettings):
    service_name: str = "kit-test"
    redelivery_backoff_s: tuple[float, ...] = (0.05, 0.05)
    max_deliver: int = 3


class Recorder:
    """A handler that records what it saw and can be told to fail."""

    def __init__(self) -> None:
        self.seen: list[Envelope] = []
        self.fail_times = 0
        self.arrived = asyncio.Event()

    async def __call__(self, event: Envelope, uow: UnitOfWork) -> None:
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("transient failure")
        self.seen.append(event)
        self.arrived.set()

    async def wait_for(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def service(service_env: dict[str, str], prefix: str) -> AsyncIterator[Service]:
    svc = Service(KitSettings(db_schema=prefix, **service_env))
    yield svc
    await svc.stop()
    cleanup = Service(KitSettings(db_schema=prefix, **service_env))
    await cleanup.db.drop_schema()
    await cleanup.db.dispose()


@pytest.fixture
async def raw(nats_url: str) -> AsyncIterator[nats.NATS]:
    """An outside system: plain nats-py, no aicloud code."""
    nc = await nats.connect(nats_url)
    yield nc
    await nc.close()


def job_payload(**overrides: object) -> dict[str, object]:
    payload: dict[str, object] = {
        "event_id": str(uuid.uuid4()),
        "tenant": "legal",
        "source": "outside-system",
        "job_id": "job-" + uuid.uuid4().hex[:8],
        "command": ["python", "train.py"],
        "gpus": 1,
    }
    payload.update(overrides)
    return payload


async def publish_raw(nc: nats.NATS, prefix: str, subject: str, data: bytes, msg_id: str) -> None:
    await nc.jetstream().publish(f"{prefix}.{subject}", data, headers={"Nats-Msg-Id": msg_id})


async def next_dead_letter(nc: nats.NATS, prefix: str, subject: str) -> DeadLetter:
    sub = await nc.jetstream().subscribe(f"{prefix}.aicloud.dlq.{subject}", ordered_consumer=True)
    msg = await sub.next_msg(timeout=10)
    await sub.unsubscribe()
    return DeadLetter.model_validate_json(msg.data)


async def test_event_from_outside_system_is_consumed(service: Service, raw: nats.NATS,
                                                     prefix: str) -> None:
    recorder = Recorder()
    service.consume(JobRequested, recorder)
    await service.start()
    payload = job_payload()
    await publish_raw(raw, prefix, JobRequested.SUBJECT, json.dumps(payload).encode(),
                      str(payload["event_id"]))
    await recorder.wait_for(1)
    event = recorder.seen[0]
    assert isinstance(event, JobRequested)
    assert event.job_id == payload["job_id"]
    assert event.tenant == "legal"
    assert event.command == ["python", "train.py"]


@pytest.mark.parametrize(
    ("data", "reason", "fragment"),
    [
        (b"{not json", "invalid_json", "payload is not JSON"),
        (json.dumps(job_payload(gpus=-2)).encode(), "invalid_schema", "gpus"),
        (json.dumps(job_payload(command=[])).encode(), "invalid_schema", "command"),
        (json.dumps({"job_id": "x", "command": ["a"]}).encode(), "invalid_schema", "tenant"),
        (b"\xff\xfe\x00binary", "invalid_json", "payload is not JSON"),
    ],
)
async def test_malformed_message_is_dead_lettered_and_consumer_keeps_working(
    service: Service, raw: nats.NATS, prefix: str, data: bytes, reason: str, fragment: str
) -> None:
    recorder = Recorder()
    service.consume(JobRequested, recorder)
    await service.start()
    await publish_raw(raw, prefix, JobRequested.SUBJECT, data, "bad-" + uuid.uuid4().hex)

    dead = await next_dead_letter(raw, prefix, JobRequested.SUBJECT)
    assert dead.reason == reason
    assert fragment in dead.error
    assert dead.subject == JobRequested.SUBJECT
    assert dead.payload_b64  # the original bytes are kept, not dropped
    import base64

    assert base64.b64decode(dead.payload_b64) == data

    good = job_payload()
    await publish_raw(raw, prefix, JobRequested.SUBJECT, json.dumps(good).encode(),
                      str(good["event_id"]))
    await recorder.wait_for(1)
    assert [e.job_id for e in recorder.seen] == [good["job_id"]]  # type: ignore[attr-defined]


async def test_redelivered_and_duplicated_events_are_processed_once(
    service: Service, raw: nats.NATS, prefix: str
) -> None:
    recorder = Recorder()
    recorder.fail_times = 1  # first delivery fails -> nak -> redelivery
    service.consume(JobRequested, recorder)
    await service.start()
    payload = job_payload()
    data = json.dumps(payload).encode()
    # Same event twice under different message ids: JetStream de-dup cannot catch it,
    # so only the inbox stands between it and a double effect.
    await publish_raw(raw, prefix, JobRequested.SUBJECT, data, "first")
    await publish_raw(raw, prefix, JobRequested.SUBJECT, data, "second")
    await recorder.wait_for(1)
    await asyncio.sleep(0.5)
    assert len(recorder.seen) == 1
    consumer = service.bus._subscriptions[0].durable
    assert await processed_count(service.db, consumer=consumer) == 1


async def test_handler_that_keeps_failing_is_dead_lettered_after_max_deliver(
    service: Service, raw: nats.NATS, prefix: str
) -> None:
    recorder = Recorder()
    recorder.fail_times = 100
    service.consume(JobRequested, recorder)
    await service.start()
    payload = job_payload()
    await publish_raw(raw, prefix, JobRequested.SUBJECT, json.dumps(payload).encode(), "poison")
    dead = await next_dead_letter(raw, prefix, JobRequested.SUBJECT)
    assert dead.reason == "handler_error"
    assert "RuntimeError: transient failure" in dead.error
    assert dead.deliveries == 3
    assert recorder.seen == []


async def test_outbox_publishes_after_crash_between_commit_and_publish(
    service_env: dict[str, str], raw: nats.NATS, prefix: str
) -> None:
    crashed = Service(KitSettings(db_schema=prefix, **service_env))
    await crashed.db.migrate()
    await crashed.bus.connect()
    event = UsageRecorded(
        tenant="legal", kind="training", resource_id="job-1", gpus_requested=2,
        started_at=datetime(2026, 11, 1, tzinfo=UTC), ended_at=datetime(2026, 11, 1, 1, tzinfo=UTC),
    )
    async with crashed.db.transaction() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS work (id TEXT PRIMARY KEY)"))
        await session.execute(text("INSERT INTO work VALUES ('job-1')"))
        await crashed.outbox.add(session, event)
    # The process dies here: committed, never relayed.
    await crashed.bus.stop()
    await crashed.db.dispose()

    sub = await raw.jetstream().subscribe(f"{prefix}.{UsageRecorded.SUBJECT}", ordered_consumer=True)
    restarted = Service(KitSettings(db_schema=prefix, **service_env))
    try:
        await restarted.start()  # the relay starts with the service
        msg = await sub.next_msg(timeout=10)
        received = UsageRecorded.model_validate_json(msg.data)
        assert received.event_id == event.event_id
        assert msg.headers and msg.headers["Nats-Msg-Id"] == str(event.event_id)
        assert await restarted.outbox.relay_once() == 0  # marked published, not sent twice
    finally:
        await restarted.stop()
        await restarted.db.drop_schema()
        await restarted.db.dispose()


async def test_trace_context_travels_in_nats_headers(service: Service, prefix: str,
                                                     tracing: object) -> None:
    from opentelemetry import trace

    seen_trace: list[int] = []

    async def handler(event: Envelope, uow: UnitOfWork) -> None:
        seen_trace.append(trace.get_current_span().get_span_context().trace_id)

    service.consume(JobRequested, handler)
    await service.start()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("cli create job") as root:
        expected = root.get_span_context().trace_id
        await service.bus.publish(JobRequested(tenant="legal", job_id="job-trace", command=["x"]))
    async with asyncio.timeout(10):
        while not seen_trace:
            await asyncio.sleep(0.02)
    assert seen_trace == [expected]


async def test_publish_is_deduplicated_by_event_id(nats_url: str, prefix: str,
                                                   raw: nats.NATS) -> None:
    bus = Bus(nats_url=nats_url, service="dedupe", prefix=prefix)
    await bus.connect()
    event = JobRequested(tenant="legal", job_id="job-dup", command=["x"])
    await bus.publish(event)
    await bus.publish(event)
    info = await raw.jetstream().stream_info(bus.stream_for(JobRequested.SUBJECT))
    await bus.stop()
    assert info.state.messages == 1


async def test_each_tenant_in_order_different_tenants_in_parallel(service: Service) -> None:
    import random

    seen: list[tuple[str, int]] = []
    active, peak = 0, 0

    async def slow(event: Envelope, uow: UnitOfWork) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(random.uniform(0.001, 0.01))
        active -= 1
        seen.append((event.tenant, int(event.job_id.split("-")[1])))  # type: ignore[attr-defined]

    service.consume(JobRequested, slow)
    await service.start()
    for i in range(60):
        team = ("legal", "research", "ops")[i % 3]
        await service.bus.publish(JobRequested(tenant=team, job_id=f"o-{i}", command=["x"]))
    async with asyncio.timeout(30):
        while len(seen) < 60:
            await asyncio.sleep(0.02)
    for team in ("legal", "research", "ops"):
        order = [n for t, n in seen if t == team]
        assert order == sorted(order), f"{team} processed out of order: {order}"
    assert peak > 1  # tenants did overlap


async def test_a_lingering_batch_consumer_gathers_a_trickle_into_few_batches(service: Service) -> None:
    """40 events 20 ms apart (0.8 s): with a 0.3 s linger they arrive in a handful of batches,
    in order, each once; without it nearly every event would be its own batch."""
    batches: list[list[str]] = []
    observed: list[list[str]] = []

    async def ingest(events: list[Envelope]) -> dict[int, str]:
        batches.append([e.job_id for e in events])  # type: ignore[attr-defined]
        return {}

    async def count(events: list[Envelope]) -> dict[int, str]:  # a wildcard: decoded by subject
        observed.append([type(e).__name__ for e in events])
        return {}

    service.consume_batch(JobRequested, ingest, fetch=1000, linger_s=0.3)
    service.observe_batch("aicloud.jobs.>", count, linger_s=0.3)
    await service.start()
    for i in range(40):
        await service.bus.publish(JobRequested(tenant="legal", job_id=f"t-{i}", command=["x"]))
        await asyncio.sleep(0.02)
    async with asyncio.timeout(10):
        while sum(map(len, batches)) < 40 or sum(map(len, observed)) < 40:
            await asyncio.sleep(0.05)
    assert [job for batch in batches for job in batch] == [f"t-{i}" for i in range(40)]
    assert len(batches) <= 8, [len(b) for b in batches]
    assert {kind for batch in observed for kind in batch} == {"JobRequested"} and len(observed) <= 8


async def test_driver_statements_share_the_sessions_transaction(service: Service) -> None:
    """The hot paths' asyncpg statements commit and roll back with the SQLAlchemy session."""
    await service.db.migrate()
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    async with service.db.transaction() as session:
        await (await driver(session)).execute(
            "INSERT INTO inbox (consumer, event_id, subject) VALUES ('t', $1, 's')", kept)
        await session.execute(text("SELECT 1"))  # SQLAlchemy's own statements after it
    with pytest.raises(RuntimeError, match="handler failed"):
        async with service.db.transaction() as session:
            pg = await driver(session)
            await pg.execute("INSERT INTO inbox (consumer, event_id, subject) VALUES ('t', $1, 's')",
                             dropped)
            raise RuntimeError("handler failed")
    async with service.db.transaction() as session:
        rows = (await session.execute(text("SELECT event_id FROM inbox WHERE consumer = 't'"))).all()
    assert [row[0] for row in rows] == [kept]  # outside the transaction, both would be there
