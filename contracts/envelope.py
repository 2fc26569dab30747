"""The envelope every event and command carries, and the subject naming rules."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

SUBJECT_PATTERN = re.compile(r"^aicloud\.[a-z_]+\.[a-z_]+\.v[0-9]+$")
DLQ_PREFIX = "aicloud.dlq"


def subject(domain: str, name: str, version: int = 1) -> str:
    """Build a full subject, ``aicloud.<domain>.<event>.v<N>``."""
    built = f"aicloud.{domain}.{name}.v{version}"
    if not SUBJECT_PATTERN.match(built):
        raise ValueError(f"invalid subject {built!r}: use lower_snake_case domain and event names")
    return built


def dead_letter_subject(original: str) -> str:
    """Where a message that could not be processed on ``original`` is parked."""
    return f"{DLQ_PREFIX}.{original}"


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel):
    """Metadata common to every message on the bus.

    Subclasses set ``SUBJECT`` (the full subject they travel on) and ``SCHEMA_VERSION``.
    Within a version fields are only ever added, with defaults, so old producers stay valid.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    SUBJECT: ClassVar[str]
    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        description="Unique id of this message; also the JetStream Nats-Msg-Id for de-duplication.",
    )
    occurred_at: datetime = Field(
        default_factory=_now, description="When the fact happened (UTC), not when it was sent."
    )
    schema_version: int = Field(default=1, ge=1, description="Version of this message's schema.")
    source: str = Field(
        default="external",
        min_length=1,
        max_length=128,
        description="The service or system that produced the message.",
    )
    tenant: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9-]*$",
        description="The team the message belongs to (lowercase, digits and dashes).",
    )
    correlation_id: str | None = Field(
        default=None,
        max_length=128,
        description="Ties together every message of one user action (e.g. the job id).",
    )


class Event(Envelope):
    """A fact that happened, named in the past tense."""


class Command(Envelope):
    """A request for something to happen, named in the imperative."""
