"""Where messages live: subjects on the wire, one stream per domain plus the dead-letter
stream, and the durable consumer behind each subscription.

An isolation prefix (one per test, or per tenant of a shared server) goes in front of every
subject and stream name, so several platforms can share one NATS server without meeting.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from contracts import DOMAINS
from contracts.envelope import DLQ_PREFIX


@dataclass(frozen=True)
class Topology:
    prefix: str = ""
    replicas: int = 1  # each stream's copies: 3 on a cluster of three servers

    def wire(self, subject: str) -> str:
        """The subject on the wire: contract subjects get the isolation prefix, if any."""
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def unwire(self, wire_subject: str) -> str:
        if self.prefix and wire_subject.startswith(self.prefix + "."):
            return wire_subject[len(self.prefix) + 1 :]
        return wire_subject

    def stream_name(self, domain: str) -> str:
        base = f"AICLOUD_{domain.upper()}"
        return f"{self.prefix.upper()}_{base}" if self.prefix else base

    def stream_for(self, subject: str) -> str:
        if subject.startswith(DLQ_PREFIX + "."):
            return self.stream_name("dlq")
        return self.stream_name(subject.split(".")[1])

    async def ensure_streams(self, js: JetStreamContext) -> None:
        """Create (or update) one stream per domain and the dead-letter stream."""
        for domain in (*DOMAINS, "dlq"):
            pattern = f"{DLQ_PREFIX}.>" if domain == "dlq" else f"aicloud.{domain}.>"
            config = StreamConfig(
                name=self.stream_name(domain),
                subjects=[self.wire(pattern)],
                duplicate_window=120.0,
                max_age=7 * 24 * 3600.0,
                num_replicas=self.replicas,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)

    async def ensure_consumer(self, js: JetStreamContext, *, filter_subject: str, durable: str,
                              max_ack_pending: int) -> str:
        """Create the durable consumer unless it exists; the name of its stream."""
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=self.wire(filter_subject),
            ack_wait=30.0,
            # Unlimited at the server: the kit counts deliveries itself and dead-letters past
            # max_deliver, so a message whose handler crashed the process is never lost.
            max_deliver=-1,
            max_ack_pending=max_ack_pending,
        )
        stream = self.stream_for(filter_subject)
        try:
            await js.consumer_info(stream, durable)
        except NotFoundError:
            await js.add_consumer(stream, config=config)
        return stream
