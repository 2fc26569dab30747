"""Each bus identity's NATS permissions, generated from ``contracts.flows``: least privilege.

A service may publish its own messages and the dead letters of what it consumes; it may
create, look up and pull from its own durable consumers only (the filter pinned in the create
subject), ack what they deliver, and create or update the streams it uses; it subscribes only
to its own inbox (``contracts.wire.inbox_prefix``), where replies and pulled messages arrive.
So no service can read another's consumer, list or read a stream directly, or delete
anything. ``publisher`` (systems outside the platform) may only publish the request subjects;
``ops`` (the operators' CLI and tools) may do anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.envelope import dead_letter_subject
from contracts.flows import FLOWS, SERVICES, stream_domains
from contracts.wire import domain_of, durable_name, inbox_prefix, kv_bucket, stream_name, wire

OPS = "ops"
JS_API = "$JS.API"


@dataclass(frozen=True)
class Grant:
    """Subjects (NATS wildcards allowed) one identity may publish to and subscribe to."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def as_nats(self) -> dict[str, Any]:
        """The ``permissions`` block of a nats-server user."""
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}

    def may_publish(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self.publish)

    def may_subscribe(self, subject: str) -> bool:
        return any(matches(pattern, subject) for pattern in self.subscribe)


def grant(identity: str, *, prefix: str = "") -> Grant:
    """``identity``'s permissions on a bus whose subjects carry ``prefix`` (none in production)."""
    if identity == OPS:
        return Grant(publish=(">",), subscribe=(">",))
    flows = FLOWS[identity]
    publish = [wire(m.SUBJECT, prefix) for m in flows.publishes]
    for filter_subject in flows.filters:
        publish.append(wire(dead_letter_subject(filter_subject), prefix))
        publish.extend(_consumer(identity, filter_subject, prefix))
    for domain in stream_domains(identity) if identity in SERVICES else ():
        publish.extend(_stream(stream_name(domain, prefix)))
    for bucket in flows.key_value:
        publish.extend(_key_value(kv_bucket(bucket, prefix)))
    return Grant(publish=tuple(dict.fromkeys(publish)), subscribe=(f"{inbox_prefix(identity)}.>",))


def grants(*, prefix: str = "") -> dict[str, Grant]:
    """Every identity's permissions: the services, ``publisher`` and ``ops``."""
    return {name: grant(name, prefix=prefix) for name in (*FLOWS, OPS)}


def table() -> dict[str, Any]:
    """The permission table as ``aicloud contracts export`` writes it (no prefix)."""
    return {name: {**found.as_nats(), "inbox_prefix": inbox_prefix(name) if name != OPS else "_INBOX"}
            for name, found in grants().items()}


def _stream(stream: str) -> list[str]:
    # Create or update (a changed config) the streams it uses; never delete or purge them.
    return [f"{JS_API}.STREAM.{op}.{stream}" for op in ("INFO", "CREATE", "UPDATE")]


def _consumer(identity: str, filter_subject: str, prefix: str) -> list[str]:
    stream, durable = stream_name(domain_of(filter_subject), prefix), durable_name(identity, filter_subject)
    return [f"{JS_API}.CONSUMER.INFO.{stream}.{durable}",
            f"{JS_API}.CONSUMER.CREATE.{stream}.{durable}.{wire(filter_subject, prefix)}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            f"$JS.ACK.{stream}.{durable}.>"]


def _key_value(bucket: str) -> list[str]:
    # A bucket is a stream of its own: get (direct or not), put, and watch it (an ordered
    # consumer, which may be recreated after a gap, with flow control).
    stream = f"KV_{bucket}"
    return [*_stream(stream),
            f"{JS_API}.DIRECT.GET.{stream}", f"{JS_API}.DIRECT.GET.{stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"{JS_API}.CONSUMER.CREATE.{stream}", f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.>", f"{JS_API}.CONSUMER.DELETE.{stream}.>",
            f"$KV.{bucket}.>", f"$JS.FC.{stream}.>"]


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS would match ``subject`` to ``pattern`` (``*`` one token, ``>`` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
