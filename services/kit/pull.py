"""Pulling from a durable JetStream consumer without nats-py's per-message fetch cost.

nats-py's ``PullSubscription.fetch`` waits for each message of a batch with its own
``asyncio.wait_for`` and so drains about 28,000 messages/s on a 2-core machine, doing nothing
else. A :class:`Puller` keeps one inbox subscription for the consumer's whole life, keeps at
most one pull request open on the server and collects what the request delivers in a plain
list: the same consumer drains well over 100,000 messages/s (``bench/ledger_ingest.py``).

The protocol is JetStream's own (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>``): a request
asks for up to ``batch`` messages and expires after ``expires`` nanoseconds; the server ends a
request it could not fill with a status message (408 when it expired, 409 when the consumer
changed). Messages that arrive after a fetch returned stay in the buffer for the next one, so
nothing delivered is dropped; an unacked message is redelivered by the server anyway.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

log = structlog.get_logger(__name__)

# A request whose end we never saw (a reconnect loses it) is given up this long after it expired.
LOST_REQUEST_GRACE_S = 1.0
# After the server refused a request (409, 503), wait this long before asking again.
REFUSED_PAUSE_S = 0.05
# While a burst is arriving, wait at most this long for its next message.
SETTLE_WAIT_S = 0.02
# After a fetch failed (a reconnect), wait this long before the next.
FETCH_FAILED_PAUSE_S = 0.5


class Puller:
    """Fetches batches from one durable pull consumer. One fetch at a time."""

    def __init__(self, nc: NATS, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._consumer = consumer
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        self._open = False  # a request of ours is open on the server
        self._outstanding = 0  # messages the open request may still deliver
        self._open_until = 0.0
        self._quiet_until = 0.0
        self._refusal: str | None = None  # the status of the last refused request, if any

    async def start(self) -> None:
        # Limits well above what the consumer's max_ack_pending lets the server send us.
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message,
                                             pending_msgs_limit=1_000_000,
                                             pending_bytes_limit=1024 * 1024 * 1024)

    async def stop(self) -> None:
        if self._sub is not None and not self._nc.is_closed:
            await self._sub.unsubscribe()
        self._sub = None

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._buffer.append(msg)
            self._outstanding -= 1
            if self._outstanding <= 0:
                self._open = False
        elif status == "100":
            return  # an idle heartbeat: the request is still open
        else:
            # 408: the request expired (the normal end of a quiet wait). Anything else (409
            # consumer deleted or too many requests, 503 no responders) ends it too; the next
            # request waits a little, and the first of a run of refusals is logged.
            self._open = False
            if status != "408":
                self._quiet_until = time.monotonic() + REFUSED_PAUSE_S
                if status != self._refusal:
                    log.warning("bus.pull_refused", consumer=self._consumer, status=status,
                                description=msg.headers.get("Description", "") if msg.headers else "")
            self._refusal = status if status != "408" else None
            self._arrived.set()
            return
        self._refusal = None
        self._arrived.set()

    async def _request(self, batch: int, expires_s: float) -> None:
        self._open, self._outstanding = True, batch
        self._open_until = time.monotonic() + expires_s + LOST_REQUEST_GRACE_S
        body = {"batch": batch, "expires": int(expires_s * 1_000_000_000)}
        await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=self._inbox)

    def _take(self, n: int) -> list[Msg]:
        taken, self._buffer = self._buffer[:n], self._buffer[n:]
        return taken

    async def fetch(self, n: int, wait_s: float) -> list[Msg]:
        """Up to ``n`` messages: those already delivered, else whatever arrives first within
        ``wait_s`` (an empty list when nothing does). A burst that is still arriving is
        collected whole (see ``_settle``), so a backlog comes back in full batches."""
        if self._sub is None:
            raise RuntimeError("Puller.fetch before start()")
        deadline = time.monotonic() + wait_s
        while True:
            now = time.monotonic()
            if self._open and now > self._open_until:
                self._open = False  # its end was lost (a reconnect): ask again
            if len(self._buffer) >= n or (self._buffer and not self._open):
                return self._take(n)
            if self._buffer:  # the open request is still delivering
                await self._settle(n)
                return self._take(n)
            remaining = deadline - now
            if remaining <= 0:
                return []
            self._arrived.clear()
            if not self._open:
                if now < self._quiet_until:  # the last request was refused: don't hammer
                    await asyncio.sleep(min(self._quiet_until - now, remaining))
                    continue
                await self._request(n, remaining)
            if self._buffer or not self._open:
                continue  # it arrived (or ended) while the request was being sent
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return []

    async def _settle(self, n: int) -> None:
        """Let a burst that is still arriving finish, so a backlog comes back in full batches:
        each message says how many more the stream holds for this consumer (``pending`` in
        its ack subject), so wait while the last one says more are coming and the open
        request may still bring them (at most ``SETTLE_WAIT_S`` for each next message)."""
        while self._open and len(self._buffer) < n and pending_after(self._buffer[-1]) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), SETTLE_WAIT_S)
            except TimeoutError:
                return  # held back (max_ack_pending reached): take what is here


def pending_after(msg: Msg) -> int:
    """Messages the stream holds for this consumer after ``msg``, when it was delivered."""
    tokens = msg.reply.split(".") if msg.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[8])
    return msg.metadata.num_pending


def delivery_count(msg: Msg) -> int:
    """How many times the server has delivered ``msg`` (1 the first time), read straight from
    its ack subject: nats-py's ``msg.metadata`` builds dataclasses and a datetime per message.
    ``$JS.ACK.<stream>.<consumer>.<delivered>...`` (9 tokens) or, with a domain and account
    hash, ``$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>...`` (11 or more)."""
    tokens = msg.reply.split(".") if msg.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]) or 1
    return msg.metadata.num_delivered or 1


@dataclass
class Feed:
    """A consumer loop's source: fetches of ``size`` until the bus stops. A failed fetch is
    logged and waited out, so a server that is away for a moment does not end the loop."""

    pull: Puller
    consumer: str
    size: int
    wait_s: float
    stopping: asyncio.Event

    @property
    def running(self) -> bool:
        return not self.stopping.is_set()

    async def next(self) -> list[Msg]:
        """The next fetch; empty when nothing arrived within ``wait_s`` or the fetch failed."""
        try:
            return await self.pull.fetch(self.size, wait_s=self.wait_s)
        except NatsError as exc:
            log.warning("bus.fetch_failed", consumer=self.consumer, error=str(exc))
            await asyncio.sleep(FETCH_FAILED_PAUSE_S)
            return []
