"""Names on the wire besides subjects: streams, durable consumers, inboxes, key-value buckets.

One definition, used by the kit (which creates them) and by the permission table (which grants
each identity exactly its own), so the two cannot drift apart. An isolation prefix (one per
test, or per tenant of a shared server) goes in front of every subject, stream and bucket.
"""

from __future__ import annotations

import re

from contracts.envelope import DLQ_PREFIX

DLQ_DOMAIN = "dlq"
_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def wire(subject: str, prefix: str = "") -> str:
    """The subject on the wire: contract subjects get the isolation prefix, if any."""
    return f"{prefix}.{subject}" if prefix else subject


def domain_of(subject: str) -> str:
    """The domain whose stream holds ``subject`` (a filter like ``aicloud.jobs.>`` too)."""
    if subject.startswith(DLQ_PREFIX + "."):
        return DLQ_DOMAIN
    return subject.split(".")[1]


def stream_name(domain: str, prefix: str = "") -> str:
    base = f"AICLOUD_{domain.upper()}"
    return f"{prefix.upper()}_{base}" if prefix else base


def durable_name(service: str, filter_subject: str) -> str:
    """A service's durable consumer on ``filter_subject`` (the contract subject, unprefixed)."""
    name = f"{service}--{filter_subject}".replace(".", "_").replace(">", "all")
    return name.replace("*", "any")


def inbox_prefix(identity: str) -> str:
    """Where replies and pulled messages reach ``identity``: its own branch of ``_INBOX``, so
    no identity can subscribe to what the server delivers to another."""
    return f"_INBOX.{_TOKEN.sub('_', identity)}"


def kv_bucket(name: str, prefix: str = "") -> str:
    """A key-value bucket of the platform, e.g. ``router_limits`` -> ``aicloud_router_limits``."""
    base = f"aicloud_{name}"
    return f"{prefix.lower()}_{base}" if prefix else base
