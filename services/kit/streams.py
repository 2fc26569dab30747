"""Where messages live: subjects on the wire, one stream per domain plus the dead-letter
stream, and the durable consumer behind each subscription.

An isolation prefix (one per test, or per tenant of a shared server) goes in front of every
subject and stream name, so several platforms can share one NATS server without meeting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nats
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import NotFoundError

from contracts import DOMAINS
from contracts.envelope import DLQ_PREFIX
from contracts.wire import DLQ_DOMAIN, domain_of, stream_name, wire


@dataclass(frozen=True)
class Topology:
    prefix: str = ""
    replicas: int = 1  # each stream's copies: 3 on a cluster of three servers

    def wire(self, subject: str) -> str:
        """The subject on the wire: contract subjects get the isolation prefix, if any."""
        return wire(subject, self.prefix)

    def unwire(self, wire_subject: str) -> str:
        if self.prefix and wire_subject.startswith(self.prefix + "."):
            return wire_subject[len(self.prefix) + 1 :]
        return wire_subject

    def stream_name(self, domain: str) -> str:
        return stream_name(domain, self.prefix)

    def stream_for(self, subject: str) -> str:
        return self.stream_name(domain_of(subject))

    async def ensure_streams(self, js: JetStreamContext, domains: Sequence[str] | None = None) -> None:
        """Create (or update) the streams of ``domains`` (a domain's, or the dead letters'),
        by default one per domain and the dead-letter stream."""
        for domain in (*DOMAINS, DLQ_DOMAIN) if domains is None else domains:
            pattern = f"{DLQ_PREFIX}.>" if domain == DLQ_DOMAIN else f"aicloud.{domain}.>"
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
                              max_ack_pending: int, ack_wait_s: float = 30.0) -> str:
        """Create the durable consumer unless it exists; the name of its stream."""
        config = ConsumerConfig(
            # named as well as durable: the create request's subject then carries the filter,
            # which the service's permissions pin (contracts.permissions)
            name=durable,
            durable_name=durable,
            filter_subject=self.wire(filter_subject),
            ack_wait=ack_wait_s,
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
