"""Token buckets that hold across router replicas: one shared bucket, local leases.

Each limit (a key's requests/min, tokens/min, monthly dollars) is one bucket in a NATS KV
bucket, changed only by compare-and-set. A replica does not ask the shared bucket on every
request: it leases a small slice (about ``lease_window_s`` worth of the refill rate) and admits
from that slice in memory. Every admitted unit was granted centrally once, so all replicas
together never exceed the limit; what a replica leased and did not use goes back after
``lease_ttl_s``. A fast key pays one KV round trip per lease, a slow key one per request.

Token limits are reserved up front (prompt estimate plus ``max_tokens``) and settled when the
real count is known: the difference is taken from (or returned to) the local lease, which may go
negative; the next lease pays the debt first.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue


@dataclass(frozen=True)
class Limit:
    """``capacity`` units, refilled at ``rate`` per second (``rate`` 0: a fixed allowance)."""

    name: str
    capacity: float
    rate: float

    @classmethod
    def per_minute(cls, name: str, amount: float) -> Limit:
        return cls(name, capacity=amount, rate=amount / 60)


@dataclass(frozen=True)
class Grant:
    granted: float
    wait_s: float  # when nothing was granted: how long until ``need`` is there


def refill(tokens: float, since: float, now: float, limit: Limit) -> float:
    return min(limit.capacity, tokens + max(0.0, now - since) * limit.rate)


def grant(tokens: float, *, want: float, need: float, limit: Limit) -> Grant:
    if tokens >= need:
        return Grant(min(want, tokens), 0.0)
    if limit.rate <= 0:
        return Grant(0.0, math.inf)
    return Grant(0.0, (need - tokens) / limit.rate)


class LimiterBusy(RuntimeError):
    """The shared bucket could not be changed in time (heavy contention, or NATS away)."""


class BucketStore(Protocol):
    async def take(self, limit: Limit, *, want: float, need: float) -> Grant: ...
    async def give_back(self, limit: Limit, amount: float) -> None: ...


class KvBuckets:
    """Shared buckets in NATS KV (JetStream-backed, so they survive a router restart)."""

    def __init__(self, kv: KeyValue, *, give_up_s: float = 2.0) -> None:
        self._kv = kv
        self._give_up_s = give_up_s

    async def take(self, limit: Limit, *, want: float, need: float) -> Grant:
        return await self._change(limit, lambda tokens: grant(tokens, want=want, need=need, limit=limit))

    async def give_back(self, limit: Limit, amount: float) -> None:
        await self._change(limit, lambda tokens: Grant(-amount, 0.0))

    async def _change(self, limit: Limit, decide: Callable[[float], Grant]) -> Grant:
        deadline = time.monotonic() + self._give_up_s
        conflicts = 0
        while time.monotonic() < deadline:
            try:
                entry = await self._kv.get(limit.name)
                state = orjson.loads(entry.value or b"{}")
                # never move the refill clock backwards: an interval refilled by another
                # replica must not be refilled again
                now = max(time.time(), state["ts"])
                tokens, revision = refill(state["t"], state["ts"], now, limit), entry.revision
            except KeyNotFoundError:
                now, tokens, revision = time.time(), limit.capacity, None
            result: Grant = decide(tokens)
            if result.granted == 0:
                return result
            value = orjson.dumps({"t": min(limit.capacity, tokens - result.granted), "ts": now})
            try:
                if revision is None:
                    await self._kv.create(limit.name, value)
                else:
                    await self._kv.update(limit.name, value, last=revision)
                return result
            except KeyWrongLastSequenceError:
                # Another replica changed it first: read again, after a jittered pause that
                # grows with each loss, so one replica cannot starve another.
                conflicts += 1
                await asyncio.sleep(random.uniform(0, min(0.0005 * 2**conflicts, 0.02)))
        raise LimiterBusy(f"rate-limit bucket {limit.name} stayed contended for {self._give_up_s:g} s")


class MemoryBuckets:
    """The same buckets for one process (tests of the lease logic, single-replica setups)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}

    async def take(self, limit: Limit, *, want: float, need: float) -> Grant:
        now = time.time()
        tokens, since = self._state.get(limit.name, (limit.capacity, now))
        tokens = refill(tokens, since, now, limit)
        result = grant(tokens, want=want, need=need, limit=limit)
        self._state[limit.name] = (tokens - result.granted, now)
        return result

    async def give_back(self, limit: Limit, amount: float) -> None:
        now = time.time()
        tokens, since = self._state.get(limit.name, (limit.capacity, now))
        self._state[limit.name] = (min(limit.capacity, refill(tokens, since, now, limit) + amount), now)


@dataclass
class _Lease:
    limit: Limit
    balance: float = 0.0
    used_at: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Limiter:
    """Admits units against shared buckets through local leases."""

    def __init__(self, store: BucketStore, *, lease_window_s: float = 0.05,
                 lease_ttl_s: float = 1.0) -> None:
        self._store = store
        self._window = lease_window_s
        self._ttl = lease_ttl_s
        self._leases: dict[str, _Lease] = {}

    async def try_take(self, limit: Limit, amount: float) -> float:
        """Take ``amount``; 0.0 when done, else seconds until it could be there."""
        lease = self._lease(limit)
        lease.used_at = time.monotonic()
        if lease.balance >= amount:
            lease.balance -= amount
            return 0.0
        async with lease.lock:
            if lease.balance >= amount:
                lease.balance -= amount
                return 0.0
            need = amount - lease.balance
            slice_ = max(1.0, limit.rate * self._window) if limit.rate > 0 else limit.capacity / 100
            result = await self._store.take(limit, want=max(need, slice_), need=need)
            if result.granted == 0:
                return result.wait_s
            lease.balance += result.granted - amount
            return 0.0

    def settle(self, limit: Limit, delta: float) -> None:
        """Charge ``delta`` more (or, negative, less) than was taken for a request."""
        self._lease(limit).balance -= delta

    def _lease(self, limit: Limit) -> _Lease:
        lease = self._leases.get(limit.name)
        if lease is None or lease.limit != limit:  # a key's limits changed: start afresh
            lease = self._leases[limit.name] = _Lease(limit)
        return lease

    def refund(self, limit: Limit, amount: float) -> None:
        self.settle(limit, -amount)

    async def return_idle(self, *, force: bool = False) -> None:
        """Give leases nobody used for ``lease_ttl_s`` (``force``: all) back to the shared buckets."""
        now = time.monotonic()
        for name, lease in list(self._leases.items()):
            if not force and (now - lease.used_at < self._ttl or lease.lock.locked()):
                continue
            amount, lease.balance = lease.balance, 0.0
            del self._leases[name]
            if amount != 0:
                await self._store.give_back(lease.limit, amount)
