"""Zero trust on the bus: a real nats-server (from the wheel) with the users and permissions
the local stack runs with, generated from contracts/flows.py. A service may publish only its
own messages, read only through its own durable consumers, and a wrong password is refused;
outside systems may only ask."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient

from aicloud.local import identities, servers
from aicloud.local.state import StackFiles
from contracts import JobAdmitted, JobRequested, UsageRecorded
from contracts.flows import PUBLISHER, stream_domains
from contracts.permissions import OPS
from contracts.wire import inbox_prefix
from services.kit.bus import Bus, Delivery, typed_decoder
from services.kit.connect import BusRefused
from services.kit.runtime import Service
from services.kit.settings import ConfigError
from services.kit.streams import Topology
from services.quota.settings import QuotaSettings

pytestmark = pytest.mark.integration
REFUSED_S = 1.0  # a refused request gets no answer: wait this long for it


@dataclass
class Secured:
    url: str
    files: StackFiles

    def password(self, identity: str) -> str:
        return identities.password(self.files, identity)

    def bus(self, service: str, *, password: str | None = None, replicas: int = 1) -> Bus:
        """The service's bus as its runtime builds it with an identity."""
        return Bus(nats_url=self.url, service=service, user=service, stream_replicas=replicas,
                   password=self.password(service) if password is None else password,
                   streams=stream_domains(service))

    async def client(self, identity: str, heard: list[str]) -> NatsClient:
        async def hear(error: Exception) -> None:
            heard.append(str(error).lower())
        return await nats.connect(self.url, user=identity, password=self.password(identity),
                                  inbox_prefix=inbox_prefix(identity), error_cb=hear,
                                  allow_reconnect=False)


def start_nats(root: Path, config: Path, **cluster: Any) -> tuple[subprocess.Popen[bytes], int, int]:
    port, monitor = servers.free_port(), servers.free_port()
    argv = servers.nats_argv(port=port, monitor_port=monitor, store_dir=root / f"nats-{port}",
                             config=config, **cluster)
    with (root / f"nats-{port}.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    return proc, port, monitor


def healthy(monitor: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{monitor}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One nats-server with the local stack's generated users (no isolation prefix: the
    permissions are exactly production's)."""
    root = tmp_path_factory.mktemp("secured-nats")
    files = StackFiles(root)
    proc, port, monitor = start_nats(root, identities.write_config(files))
    try:
        wait_until(lambda: healthy(monitor), "nats-server")
        yield Secured(f"nats://127.0.0.1:{port}", files)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def ops(secured: Secured) -> AsyncIterator[NatsClient]:
    """The operators' client; every stream exists (as after the platform's first start)."""
    nc = await nats.connect(secured.url, user=OPS, password=secured.password(OPS))
    await Topology().ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


def _admitted(job_id: str) -> JobAdmitted:
    return JobAdmitted(tenant="legal", job_id=job_id,
                       request=JobRequested(tenant="legal", job_id=job_id, command=["true"]))


def _usage(resource_id: str) -> UsageRecorded:
    now = datetime.now(UTC)
    return UsageRecorded(tenant="legal", kind="training", resource_id=resource_id,
                         started_at=now - timedelta(minutes=1), ended_at=now)


async def test_a_service_publishing_outside_its_subjects_is_refused_and_hears_why(
        secured: Secured, ops: NatsClient, monkeypatch: pytest.MonkeyPatch) -> None:
    quota, heard = secured.bus("quota"), []

    async def hear(error: Exception) -> None:
        heard.append(str(error).lower())

    monkeypatch.setattr(quota, "_on_error", hear)
    await quota.connect()
    try:
        before = (await ops.jetstream().stream_info("AICLOUD_USAGE")).state.messages
        await quota.publish(_admitted("own-event"))  # its own: stored
        with pytest.raises(nats.errors.TimeoutError):  # the ledger's input: never stored
            await quota.js.publish(UsageRecorded.SUBJECT, _usage("forged").model_dump_json().encode(),
                                   timeout=REFUSED_S)
        assert any('permissions violation for publish to "aicloud.usage.recorded.v1"' in line
                   for line in heard), heard
        assert (await ops.jetstream().stream_info("AICLOUD_USAGE")).state.messages == before
    finally:
        await quota.stop()


async def test_a_consumer_reads_through_its_own_durable_but_cannot_read_another_services_stream(
        secured: Secured, ops: NatsClient) -> None:
    provisioner, ledger = secured.bus("provisioner"), secured.bus("cost-ledger")
    got: list[str] = []

    async def charge(event: UsageRecorded, _: Delivery) -> None:
        got.append(event.resource_id)

    ledger.subscribe(UsageRecorded.SUBJECT, charge, decode=typed_decoder(UsageRecorded))
    await provisioner.connect()
    await ledger.connect()
    await ledger.start()
    heard: list[str] = []
    quota = await secured.client("quota", heard)
    try:
        await provisioner.publish(_usage("job-billed"))
        await ops.jetstream().publish(UsageRecorded.SUBJECT, b"not json")  # dead-lettered by the ledger
        deadline = time.monotonic() + 15
        while "job-billed" not in got:
            assert time.monotonic() < deadline, "the ledger never got the usage through its durable"
            await asyncio.sleep(0.05)
        js = quota.jetstream(timeout=REFUSED_S)
        for attempt in (
            js.pull_subscribe(UsageRecorded.SUBJECT, durable="quota-snoop", stream="AICLOUD_USAGE"),
            js.pull_subscribe(UsageRecorded.SUBJECT, durable="cost-ledger--aicloud_usage_recorded_v1",
                              stream="AICLOUD_USAGE"),
            js.get_msg("AICLOUD_USAGE", 1),
            js.stream_info("AICLOUD_USAGE"),
        ):
            with pytest.raises(nats.errors.TimeoutError):
                await attempt
        for subject in (UsageRecorded.SUBJECT, f"{inbox_prefix('cost-ledger')}.>"):
            await quota.subscribe(subject)
        await quota.flush()
        await asyncio.sleep(0.2)
        for refused in ('publish to "$js.api.consumer.info.aicloud_usage.quota-snoop"',
                        'publish to "$js.api.stream.msg.get.aicloud_usage"',
                        'subscription to "aicloud.usage.recorded.v1"',
                        'subscription to "_inbox.cost-ledger.>"'):
            assert any(refused in line for line in heard), (refused, heard)
        dead = await _last(ops, "AICLOUD_DLQ", "aicloud.dlq.aicloud.usage.recorded.v1")
        assert json.loads(dead)["consumer"] == "cost-ledger--aicloud_usage_recorded_v1"
    finally:
        await quota.close()
        await ledger.stop()
        await provisioner.stop()


async def _last(ops: NatsClient, stream: str, subject: str, within_s: float = 15) -> bytes:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return bytes((await ops.jetstream().get_last_msg(stream, subject)).data)
        except nats.js.errors.NotFoundError:
            assert time.monotonic() < deadline, f"nothing on {subject}"
            await asyncio.sleep(0.1)


async def test_a_wrong_password_is_refused_at_once(secured: Secured, database_url: str, prefix: str) -> None:
    started = time.monotonic()
    with pytest.raises(BusRefused, match="NATS refused user 'quota'"):
        await secured.bus("quota", password="not-the-password").connect()
    assert time.monotonic() - started < 5, "refused at once, not retried for ever"
    service = Service(QuotaSettings(nats_url=secured.url, database_url=database_url, subject_prefix=prefix,
                                    db_schema=prefix, nats_user="quota", nats_password="wrong"))
    with pytest.raises(ConfigError, match="AICLOUD_QUOTA_NATS_USER and AICLOUD_QUOTA_NATS_PASSWORD"):
        await service.start()
    await service.db.dispose()


async def test_the_publisher_may_only_publish_request_subjects(secured: Secured, ops: NatsClient) -> None:
    heard: list[str] = []
    outside = await secured.client(PUBLISHER, heard)
    try:
        js = outside.jetstream(timeout=REFUSED_S)
        request = JobRequested(tenant="legal", job_id="from-erp", command=["true"], source="erp")
        ack = await js.publish(JobRequested.SUBJECT, request.model_dump_json().encode())
        assert ack.stream == "AICLOUD_JOBS"
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(JobAdmitted.SUBJECT, _admitted("self-admitted").model_dump_json().encode())
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info("AICLOUD_JOBS")
        await outside.subscribe("aicloud.jobs.>")
        await outside.flush()
        await asyncio.sleep(0.2)
        for refused in ('publish to "aicloud.jobs.admitted.v1"',
                        'publish to "$js.api.stream.info.aicloud_jobs"', 'subscription to "aicloud.jobs.>"'):
            assert any(refused in line for line in heard), (refused, heard)
    finally:
        await outside.close()


async def test_a_cluster_of_three_holds_every_identity_to_the_same_permissions(
        tmp_path: Path) -> None:
    files = StackFiles(tmp_path)
    config = identities.write_config(files)
    routes = [servers.free_port() for _ in range(3)]
    nodes = [start_nats(tmp_path, config, name=f"aicloud-local-{n}", cluster_port=route,
                        routes=[r for r in routes if r != route]) for n, route in enumerate(routes, start=1)]
    try:
        for _, _, monitor in nodes:
            await asyncio.to_thread(wait_until, lambda m=monitor: healthy(m), "a JetStream meta leader")
        secured = Secured(",".join(f"nats://127.0.0.1:{port}" for _, port, _ in nodes), files)
        quota = secured.bus("quota", replicas=3)
        await quota.connect()  # creates its streams, R3
        try:
            await quota.publish(_admitted("clustered"))
            info = await quota.js.stream_info("AICLOUD_JOBS")
            assert info.config.num_replicas == 3 and info.state.messages == 1
        finally:
            await quota.stop()
        with pytest.raises(BusRefused):
            await secured.bus("quota", password="wrong").connect()
    finally:
        for proc, _, _ in nodes:
            proc.terminate()
            proc.wait(10)
