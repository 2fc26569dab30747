"""Inference domain: requests served by the router."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from contracts.envelope import Event, subject


class InferenceCompleted(Event):
    """The router finished one request (streamed or not), successfully or not."""

    SUBJECT: ClassVar[str] = subject("inference", "completed")

    request_id: str
    key_id: str = Field(description="Virtual key id (never the key itself).")
    model: str = Field(description="Model alias the caller asked for.")
    target: str = Field(description="Provider target that served it.")
    version: str | None = None
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    tokens_cached: int = Field(default=0, ge=0)
    tokens_reasoning: int = Field(default=0, ge=0)
    latency_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(default=None, ge=0, description="Time to first token.")
    status: Literal["ok", "error", "rejected", "cancelled"]
    cost_usd: Decimal | None = None
    cost_flagged: bool = Field(default=False, description="No price for the model: fallback rate.")
    operation: Literal["chat", "embeddings", "predict"] = "chat"
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=2000, description="Why it was not ok.")
    pii_findings: list[str] = Field(
        default_factory=list, description="Kinds of personal data found in the prompt (never the data).")
    embedding_sketch: list[Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)]] | None = Field(
        default=None, max_length=8, description="A platform embedding endpoint's answer projected on "
        "fixed random directions (the router's sketch.py): watched for input drift, never the input.")


class InferenceSampled(Event):
    """One answer of a platform endpoint, sampled for quality scoring (policies/quality.yaml).
    Only answers whose prompt held no personal data are sampled; both texts are cut short."""

    SUBJECT: ClassVar[str] = subject("inference", "sampled")

    request_id: str
    model: str = Field(description="Model alias the caller asked for.")
    endpoint: str = Field(min_length=1, max_length=128, description="The platform endpoint that answered.")
    version: str | None = Field(default=None, max_length=128)
    question: str = Field(max_length=100_000, description="The prompt as the endpoint received it.")
    answer: str = Field(max_length=100_000)
