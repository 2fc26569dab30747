"""The kit's Puller against a real JetStream consumer: full batches from a backlog, a trickle
answered at once, nothing lost between fetches, and a deleted consumer that does not spin."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from services.kit.pull import Puller, delivery_count

pytestmark = pytest.mark.integration


@pytest.fixture
async def stream(nats_url: str) -> AsyncIterator[tuple[Client, str]]:
    nc = await nats.connect(nats_url)
    name = f"PULL{uuid.uuid4().hex[:8]}".upper()
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    await js.add_consumer(name, ConsumerConfig(durable_name="c", max_ack_pending=400))
    yield nc, name
    await js.delete_stream(name)
    await nc.close()


async def publish(nc: Client, stream: str, count: int, start: int = 0) -> None:
    js = nc.jetstream()
    await asyncio.gather(*(js.publish(f"{stream.lower()}.m", str(i).encode())
                           for i in range(start, start + count)))


async def test_backlog_comes_back_in_full_batches_in_order(stream: tuple[Client, str]) -> None:
    nc, name = stream
    await publish(nc, name, 250)
    puller = Puller(nc, name, "c")
    await puller.start()
    got: list[int] = []
    sizes = []
    while len(got) < 250:
        batch = await puller.fetch(100, wait_s=2)
        assert batch, f"nothing fetched after {len(got)} of 250"
        sizes.append(len(batch))
        got += [int(m.data) for m in batch]
        for m in batch:
            assert delivery_count(m) == 1
            await m.ack()
    assert got == list(range(250))
    assert sizes == [100, 100, 50]
    await puller.stop()


async def test_a_trickle_is_answered_at_once_and_nothing_is_lost(stream: tuple[Client, str]) -> None:
    nc, name = stream
    puller = Puller(nc, name, "c")
    await puller.start()
    assert await puller.fetch(10, wait_s=0.2) == []  # nothing there: empty, not an error
    started = time.monotonic()
    waiting = asyncio.create_task(puller.fetch(10, wait_s=5))
    await asyncio.sleep(0.1)
    await publish(nc, name, 1)
    first = await waiting
    assert [m.data for m in first] == [b"0"]
    assert time.monotonic() - started < 1.0  # not held until the request expires
    # More arrive on the request that is still open: the next fetches get them, in order.
    await publish(nc, name, 5, start=1)
    seen = [m.data for m in first]
    while len(seen) < 6:
        batch = await puller.fetch(10, wait_s=2)
        assert batch, f"lost messages: saw {seen}"
        seen += [m.data for m in batch]
    assert seen == [str(i).encode() for i in range(6)]
    await puller.stop()


async def test_unacked_messages_come_again_with_their_delivery_count(
        stream: tuple[Client, str]) -> None:
    nc, name = stream
    await publish(nc, name, 3)
    puller = Puller(nc, name, "c")
    await puller.start()
    first = await puller.fetch(3, wait_s=2)
    for m in first:
        await m.nak()
    again = await puller.fetch(3, wait_s=2)
    assert [m.data for m in again] == [m.data for m in first]
    assert [delivery_count(m) for m in again] == [2, 2, 2]
    await puller.stop()


async def test_a_deleted_consumer_returns_empty_without_spinning(stream: tuple[Client, str]) -> None:
    nc, name = stream
    puller = Puller(nc, name, "c")
    await puller.start()
    await nc.jetstream().delete_consumer(name, "c")
    requests = 0
    original = puller._request

    async def counted(batch: int, expires_s: float) -> None:
        nonlocal requests
        requests += 1
        await original(batch, expires_s)

    puller._request = counted  # type: ignore[method-assign]
    assert await puller.fetch(10, wait_s=0.5) == []
    assert requests <= 12  # refused requests are spaced out, not repeated in a tight loop
    await puller.stop()
