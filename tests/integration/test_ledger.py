"""The cost ledger on real NATS and Postgres: exact bills, exactly once, budgets that act."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from sqlalchemy import text

from contracts import InferenceCompleted, UsageRecorded
from services.cost_ledger.app import build
from services.cost_ledger.settings import CostLedgerSettings
from services.kit.runtime import Service

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ADMIN = "ledger-admin-for-tests"
BOOK = yaml.safe_load((ROOT / "policies" / "pricebook.yaml").read_text())["versions"][0]


def reference_usd(event: UsageRecorded) -> Decimal:
    """The bill computed independently of the ledger's code: max(requested, used) x hours x rate."""
    hours = Decimal(str((event.ended_at - event.started_at).total_seconds())) / 3600
    gpus = Decimal(str(max(event.gpus_requested, event.gpus_used)))
    compute = BOOK["compute"]
    gpu_rate = Decimal(str(compute["gpu_hour"][event.gpu_type][event.price_class])) if gpus else 0
    return hours * (gpus * gpu_rate + Decimal(str(event.vcpus)) * Decimal(str(compute["vcpu_hour"]))
                    + Decimal(str(event.memory_gb)) * Decimal(str(compute["gb_ram_hour"])))


def random_usage(rng: random.Random, team: str = "legal") -> UsageRecorded:
    start = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 20 * 86400))
    return UsageRecorded(
        tenant=team, kind=rng.choice(["training", "notebook", "endpoint"]),
        resource_id=f"job-{rng.randrange(50)}", project=rng.choice(["legal-rag", "contracts"]),
        gpu_type=rng.choice(["h100-80gb", "a100-80gb", "a10-24gb"]),
        price_class=rng.choice(["on-demand", "spot"]), gpus_requested=rng.choice([0.5, 1, 2, 4]),
        gpus_used=rng.choice([0, 0.5, 1, 3]), vcpus=rng.choice([0, 4, 8]),
        memory_gb=rng.choice([0, 16, 64]), started_at=start,
        ended_at=start + timedelta(seconds=rng.randrange(1, 6 * 3600)))


async def publish(nc: Any, prefix: str, events: list[Any], *, duplicate_every: int = 20) -> None:
    """Publish each event; every ``duplicate_every``-th once more with a new message id, so
    JetStream's de-duplication cannot hide it and only the ledger's idempotency stops it."""
    js = nc.jetstream()
    pending = []
    for i, event in enumerate(events):
        data = event.model_dump_json().encode()
        pending.append(js.publish(f"{prefix}.{event.SUBJECT}", data,
                                  headers={"Nats-Msg-Id": str(event.event_id)}))
        if i % duplicate_every == 0:
            pending.append(js.publish(f"{prefix}.{event.SUBJECT}", data, headers={"Nats-Msg-Id": f"dup-{i}"}))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


@pytest.fixture
async def ledger(service_env: dict[str, str], prefix: str) -> AsyncIterator[Service]:
    service = build(CostLedgerSettings(**service_env, db_schema=f"{prefix}_ledger", admin_token=ADMIN,
                                       pool_gpus={"h100-80gb": 16}))
    await service.start()
    yield service
    await service.stop()
    await service.db.drop_schema()
    await service.db.dispose()


async def api(service: Service, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=service.http)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as client:
        return await client.request(method, path, **kwargs)


async def lines_in(service: Service) -> int:
    async with service.db.transaction() as session:
        return int((await session.execute(text("SELECT count(DISTINCT event_id) FROM ledger_entries"))
                    ).scalar_one())


async def until(check: Callable[[], Any], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_the_bill_is_exact_to_the_cent_and_duplicates_charge_nothing(
        ledger: Service, nats_url: str, prefix: str) -> None:
    rng = random.Random(7)
    usage = [random_usage(rng) for _ in range(400)]
    inference = [InferenceCompleted(tenant="legal", request_id=f"r{i}", key_id="k", model="gpt-4o-mini",
                                    target="openai/gpt-4o-mini", tokens_in=1000 * i, tokens_out=500,
                                    latency_ms=3, status="ok", occurred_at=datetime(2026, 11, 5, tzinfo=UTC))
                 for i in range(100)]
    nc = await nats.connect(nats_url)
    await publish(nc, prefix, [*usage, *inference])
    await nc.close()
    await until(lambda: _equals(lines_in(ledger), 500))
    expected = sum((reference_usd(u) for u in usage), Decimal(0)) + sum(
        (Decimal(i.tokens_in) * Decimal("0.15") + Decimal(i.tokens_out) * Decimal("0.60")) / 1_000_000
        for i in inference)
    found = (await api(ledger, "GET", "/internal/spend", params={
        "team": "legal", "by": "kind", "from": "2026-11-01", "to": "2026-12-01"})).json()
    assert Decimal(found["total_usd"]).quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
    assert Decimal(found["total_usd"]) == pytest.approx(expected, abs=Decimal("0.000001"))
    by_kind = {r["kind"]: Decimal(r["usd"]) for r in found["rows"]}
    assert set(by_kind) == {"training", "notebook", "endpoint", "inference"}
    daily = (await api(ledger, "GET", "/internal/spend", params={
        "team": "legal", "step": "day", "from": "2026-11-01", "to": "2026-12-01"})).json()
    assert sum(Decimal(r["usd"]) for r in daily["rows"]) == Decimal(found["total_usd"])


async def test_a_ledger_with_nothing_in_it_bills_zero_in_every_shape(ledger: Service) -> None:
    """A brand-new platform's bill: empty rows and 0, never a server error (it was a 500)."""
    for params in ({}, {"by": "model"}, {"step": "day"}, {"team": "legal"},
                   {"team": "legal", "from": "2026-11-01", "to": "2026-12-01"},
                   {"from": "2026-11-01T03:00:00Z", "to": "2026-11-01T05:00:00Z", "by": "user_id"}):
        found = await api(ledger, "GET", "/internal/spend", params=params)
        assert found.status_code == 200, (params, found.text)
        assert found.json()["rows"] == [] and Decimal(found.json()["total_usd"]) == 0, params


async def _equals(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_a_late_event_lands_in_its_own_period(ledger: Service, nats_url: str, prefix: str) -> None:
    late = UsageRecorded(tenant="legal", kind="training", resource_id="old-job", gpu_type="a10-24gb",
                         gpus_requested=1, started_at=datetime(2026, 9, 30, 23, tzinfo=UTC),
                         ended_at=datetime(2026, 10, 1, 1, tzinfo=UTC))
    nc = await nats.connect(nats_url)
    await publish(nc, prefix, [late], duplicate_every=10**9)
    await nc.close()
    await until(lambda: _equals(lines_in(ledger), 1))
    found = (await api(ledger, "GET", "/internal/spend", params={
        "team": "legal", "step": "month", "from": "2026-09-01", "to": "2026-11-01"})).json()
    assert [(r["bucket"][:7], Decimal(r["usd"])) for r in found["rows"]] == [
        ("2026-09", Decimal("1.01")), ("2026-10", Decimal("1.01"))]  # one hour in each


async def test_a_reversal_cancels_a_line_once_and_the_bill_with_it(
        ledger: Service, nats_url: str, prefix: str) -> None:
    """Found by fuzzing: every reversal was a 500 (asyncpg could not type ``-$1``)."""
    usage = UsageRecorded(tenant="legal", kind="training", resource_id="mistake", gpu_type="a10-24gb",
                          gpus_requested=1, started_at=datetime(2026, 11, 3, 10, tzinfo=UTC),
                          ended_at=datetime(2026, 11, 3, 11, tzinfo=UTC))
    nc = await nats.connect(nats_url)
    await publish(nc, prefix, [usage], duplicate_every=10**9)
    await nc.close()
    await until(lambda: _equals(lines_in(ledger), 1))
    async with ledger.db.transaction() as session:
        entry_id = (await session.execute(text("SELECT min(entry_id) FROM ledger_entries"))).scalar_one()
    admin = {"authorization": f"Bearer {ADMIN}"}
    body = {"entry_id": entry_id, "reason": "billed by mistake"}
    reversed_ = await api(ledger, "POST", "/v1/ledger/reversals", json=body, headers=admin)
    assert reversed_.status_code == 201, reversed_.text
    assert reversed_.json()["reverses"] == entry_id
    again = await api(ledger, "POST", "/v1/ledger/reversals", json=body, headers=admin)
    assert again.status_code == 404 and f"no line {entry_id}" in again.json()["detail"]
    for params in ({"by": "kind"}, {"step": "day"}, {"step": "hour"}, {"by": "resource_id"}):
        found = (await api(ledger, "GET", "/internal/spend", params={
            "team": "legal", "from": "2026-11-01", "to": "2026-12-01", **params})).json()
        assert Decimal(found["total_usd"]) == 0, (params, found)


async def test_absurd_and_malformed_usage_is_dead_lettered_with_the_reason(
        ledger: Service, nats_url: str, prefix: str) -> None:
    nc = await nats.connect(nats_url)
    dlq = await nc.subscribe(f"{prefix}.aicloud.dlq.>")
    js = nc.jetstream()
    absurd = random_usage(random.Random(1)).model_copy(update={"gpus_requested": 100_000})
    await js.publish(f"{prefix}.{absurd.SUBJECT}", absurd.model_dump_json().encode())
    await js.publish(f"{prefix}.{absurd.SUBJECT}", b'{"tenant": "legal", "kind": "training"}')
    letters = [json.loads((await dlq.next_msg(timeout=10)).data) for _ in range(2)]
    await nc.close()
    reasons = {letter["reason"]: letter["error"] for letter in letters}
    assert "100000 GPUs for" in reasons["rejected"] and "not plausible" in reasons["rejected"]
    assert "resource_id: Field required" in reasons["invalid_schema"]
    assert await lines_in(ledger) == 0


async def test_budget_thresholds_alert_once_and_a_raise_rearms_them(
        ledger: Service, nats_url: str, prefix: str) -> None:
    nc = await nats.connect(nats_url)
    alerts = await nc.subscribe(f"{prefix}.aicloud.budgets.>")
    bad = await api(ledger, "PUT", "/v1/budgets/legal", json={"amount_usd": -3},
                    headers={"authorization": f"Bearer {ADMIN}"})
    assert bad.status_code == 422 and "amount_usd" in bad.text
    unknown = await api(ledger, "PUT", "/v1/budgets/nobody", json={"amount_usd": 10},
                        headers={"authorization": f"Bearer {ADMIN}"})
    assert unknown.status_code == 404, unknown.text
    assert "no team 'nobody'" in unknown.text
    ok = await api(ledger, "PUT", "/v1/budgets/legal", json={"amount_usd": "10", "action": "block"},
                   headers={"authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200
    day_two = datetime.now(UTC).replace(day=2, hour=0, minute=0, second=0, microsecond=0)

    def hour_of_h100(i: int) -> UsageRecorded:  # $6.88 each, in this month
        start = day_two + timedelta(hours=i)
        return UsageRecorded(tenant="legal", kind="training", resource_id=f"j{i}", gpu_type="h100-80gb",
                             gpus_requested=1, started_at=start, ended_at=start + timedelta(hours=1))

    seen: list[tuple[str, int | None]] = []
    bodies: list[dict[str, Any]] = []

    async def collect(n: int, timeout: float = 10) -> None:
        while len(seen) < n:
            msg = await alerts.next_msg(timeout=timeout)
            body = json.loads(msg.data)
            bodies.append(body)
            seen.append((msg.subject.split(".")[-2], body.get("threshold_percent")))

    await collect(1)
    await publish(nc, prefix, [hour_of_h100(0)], duplicate_every=1)  # 68.8 %, sent twice
    await collect(2)
    assert seen == [("changed", None), ("threshold_crossed", 50)]
    await publish(nc, prefix, [hour_of_h100(1), hour_of_h100(2)], duplicate_every=1)  # 206.4 %
    await collect(5)
    assert sorted(seen[2:], key=str) == sorted([("threshold_crossed", 80), ("threshold_crossed", 100),
                                                ("exhausted", None)], key=str)
    with pytest.raises(nats.errors.TimeoutError):
        await collect(6, timeout=1.5)  # nothing twice, duplicates included
    [exhausted] = [b for b, (subject, _) in zip(bodies, seen, strict=True) if subject == "exhausted"]
    assert exhausted["action"] == "block" and exhausted["budget_id"] == "legal-monthly"
    assert Decimal(exhausted["spent_usd"]) in (Decimal("13.76"), Decimal("20.64"))  # 2 or 3 hours
    await api(ledger, "PUT", "/v1/budgets/legal", json={"amount_usd": "100", "action": "block"},
              headers={"authorization": f"Bearer {ADMIN}"})
    raised = []
    while not raised:
        msg = await alerts.next_msg(timeout=10)
        raised = [json.loads(msg.data)] if msg.subject.endswith("changed.v1") else []
    assert Decimal(raised[0]["spent_usd"]) == Decimal("20.64") and raised[0]["amount_usd"] == "100"
    await nc.close()


async def test_killing_the_ledger_mid_stream_changes_nothing(
        service_env: dict[str, str], prefix: str, nats_url: str, tmp_path: Path) -> None:
    """SIGKILL the ledger process while it ingests, start it again: every event is charged
    exactly once and the total matches the reference."""
    rng = random.Random(11)
    total_events = 8_000  # at 200 per transaction, ~10 s of work here: the kill lands mid-stream
    events = [random_usage(rng, team="research") for _ in range(total_events)]
    env = {**os.environ, "AICLOUD_COST_LEDGER_NATS_URL": nats_url,
           "AICLOUD_COST_LEDGER_DATABASE_URL": service_env["database_url"],
           "AICLOUD_COST_LEDGER_SUBJECT_PREFIX": prefix,
           "AICLOUD_COST_LEDGER_DB_SCHEMA": f"{prefix}_ledger", "AICLOUD_COST_LEDGER_HTTP_PORT": "0",
           "AICLOUD_COST_LEDGER_BATCH": "200", "AICLOUD_COST_LEDGER_LOG_LEVEL": "warning",
           # what the killed ledger held is delivered again after 5 s, not the default 30 s
           "AICLOUD_COST_LEDGER_ACK_WAIT_S": "5"}
    checker = Service(CostLedgerSettings(**service_env, db_schema=f"{prefix}_ledger", ack_wait_s=5))
    await checker.bus.connect()  # creates this test's streams
    nc = await nats.connect(nats_url)
    await publish(nc, prefix, events)
    await nc.close()

    async def charged() -> int:
        try:
            return await lines_in(checker)
        except Exception:
            return 0

    log = (tmp_path / "ledger.log").open("wb")

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cost_ledger", env=env, stdout=log, stderr=subprocess.STDOUT)

    first = await start()
    await until(lambda: _between(charged(), 1, total_events - 1), timeout=60)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    killed_at = await charged()
    second = await start()
    try:
        await until(lambda: _equals(charged(), total_events), timeout=120)
    finally:
        second.terminate()
        await second.wait()
    async with checker.db.transaction() as session:
        total = (await session.execute(text("SELECT sum(usd) FROM ledger_entries"))).scalar_one()
        rolled = (await session.execute(text("SELECT sum(usd) FROM spend_hourly"))).scalar_one()
    nc = await nats.connect(nats_url)
    try:  # the ledger's consumer of usage was created with the ack wait it was given
        consumers = await nc.jetstream().consumers_info(checker.bus.stream_for(UsageRecorded.SUBJECT))
        waits = {c.config.ack_wait for c in consumers}
    finally:
        await nc.close()
    await checker.db.drop_schema()
    await checker.db.dispose()
    await checker.bus.stop()
    assert 0 < killed_at < total_events
    assert waits == {5.0}, waits
    expected = sum((reference_usd(e) for e in events), Decimal(0))
    assert total.quantize(Decimal("0.01")) == expected.quantize(Decimal("0.01"))
    assert rolled == total


async def _between(value: Any, low: int, high: int) -> bool:
    return low <= await value <= high
