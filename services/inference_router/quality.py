"""Answers of the platform's own endpoints sampled for quality scoring (``policies/quality.yaml``).

A sampled answer goes on the bus as ``inference.sampled`` for the observability-collector's judge.
Only successful, non-streamed chat answers of ``platform/`` targets whose prompt held no personal
data are sampled. Publishing is off the request path and best effort: a sample the bus does not
take is dropped and counted, never retried at a caller's expense.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter

from contracts import InferenceSampled
from guardrails.quality import QualityPolicy
from services.inference_router.requests import Call
from services.inference_router.telemetry import Outcome

log = structlog.get_logger(__name__)
PLATFORM = "platform/"
MAX_IN_FLIGHT = 100


class Sampler:
    def __init__(self, publish: Callable[[Any], Awaitable[None]], policy: QualityPolicy | None, *,
                 registry: CollectorRegistry | None = None, rng: random.Random | None = None) -> None:
        self._publish, self.policy = publish, policy
        self._rng = rng or random.Random()
        self._in_flight: set[asyncio.Task[None]] = set()
        self.samples = Counter("aicloud_router_quality_samples_total",
                               "Answers sampled for quality scoring, by outcome.", ["outcome"],
                               registry=registry)

    def pick(self, call: Call) -> bool:
        """Whether to keep this call's answer (decided before it is served)."""
        rate = self.policy.sample_rate if self.policy else 0.0
        return (call.operation == "chat" and not call.stream and rate > 0
                and self._rng.random() < rate)

    def offer(self, outcome: Outcome) -> None:
        """Publish the kept answer, if it qualifies; never raises."""
        if outcome.answer is None or self.policy is None:
            return
        if outcome.status != "ok" or not outcome.target.startswith(PLATFORM) or outcome.pii:
            self.samples.labels("not_eligible").inc()
            return
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self.samples.labels("dropped").inc()
            return
        cut, call = self.policy.max_chars, outcome.call
        endpoint = outcome.target.removeprefix(PLATFORM).partition("/")[0][:128] or "-"
        event = InferenceSampled(
            tenant=outcome.team, source="inference-router", correlation_id=call.request_id,
            request_id=call.request_id, model=call.alias, endpoint=endpoint,
            version=(outcome.version or "")[:128] or None,
            question=call.prompt_text()[:cut], answer=outcome.answer[:cut])
        task = asyncio.get_running_loop().create_task(self._send(event))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, event: InferenceSampled) -> None:
        try:
            await self._publish(event)
            self.samples.labels("published").inc()
        except Exception as exc:
            self.samples.labels("dropped").inc()
            log.warning("quality.sample_dropped", request_id=event.request_id, error=str(exc)[:300])


def answer_text(payload: dict[str, Any]) -> str:
    """The assistant's text in an OpenAI- or Anthropic-shaped response."""
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
        return content if isinstance(content, str) else ""
    blocks = payload.get("content")
    if isinstance(blocks, list):
        return "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
    return ""
