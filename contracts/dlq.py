"""The dead-letter record a consumer writes when it cannot process a message."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DeadLetter(BaseModel):
    """Published on ``aicloud.dlq.<original subject>``; the original bytes are kept verbatim."""

    model_config = ConfigDict(frozen=True)

    subject: str = Field(description="Subject the message arrived on.")
    consumer: str = Field(description="Durable consumer that gave up on it.")
    reason: str = Field(description="invalid_json | invalid_schema | handler_error")
    error: str = Field(description="The validation or handler error, readable by a person.")
    deliveries: int = Field(ge=1, description="How many times it was delivered.")
    payload: str = Field(description="Original payload as text (invalid UTF-8 replaced).")
    payload_b64: str = Field(description="Original payload, base64, byte for byte.")
    headers: dict[str, str] = Field(default_factory=dict)
