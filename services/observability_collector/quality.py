"""Answer quality of the platform's endpoints, scored by an evaluator model (LLM-as-judge).

The router samples answers (``inference.sampled``); each is put to ``judge_model`` through the
router, with the rubric of ``policies/quality.yaml`` as the system prompt and the platform team's
key, so the ledger charges the evaluator's cost to ``platform``. The 1-5 score becomes 0..1 and
``aicloud_endpoint_quality_score{endpoint, version}`` is the mean of the last ``window`` scores.

Judging runs in one background task fed by a bounded queue: the collector's event handling never
waits for a judge, and a burst of samples beyond the queue is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from contracts import InferenceSampled
from guardrails.quality import QualityPolicy, score_of
from services.observability_collector.genai import LabelCap

log = structlog.get_logger()
QUEUE = 1000
MAX_SERIES = 2000  # (endpoint, version) pairs scored at once


@dataclass(frozen=True)
class JudgeAccess:
    router_url: str
    key: Callable[[], str | None]  # read when needed: the local stack writes it after start


class QualityJudge:
    def __init__(self, registry: CollectorRegistry | None, *, policy: QualityPolicy,
                 access: JudgeAccess, timeout_s: float = 60.0) -> None:
        self.policy, self.access, self.timeout_s = policy, access, timeout_s
        self.endpoints = LabelCap("endpoint", 500)
        self.queue: asyncio.Queue[InferenceSampled] = asyncio.Queue(QUEUE)
        self.windows: dict[tuple[str, str], deque[float]] = {}
        self.score = Gauge("aicloud_endpoint_quality_score", "Mean judged answer quality (0..1) of "
                           "the last scored answers, by endpoint and version.",
                           ["endpoint", "version"], registry=registry)
        self.judgements = Counter("aicloud_quality_judgements_total",
                                  "Sampled answers by what became of them.", ["outcome"],
                                  registry=registry)
        self._task: asyncio.Task[None] | None = None

    def offer(self, event: InferenceSampled) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.judgements.labels("dropped").inc()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quality-judge")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
                event = await self.queue.get()
                try:
                    await self.judge(client, event)
                finally:
                    self.queue.task_done()

    async def judge(self, client: httpx.AsyncClient, event: InferenceSampled) -> float | None:
        """Score one answer; a judge that fails or answers without a score scores nothing."""
        key = self.access.key()
        if not key:
            self.judgements.labels("no_key").inc()
            return None
        try:
            response = await client.post(
                f"{self.access.router_url.rstrip('/')}/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": self.policy.judge_model, "temperature": 0, "user": "aicloud-quality-judge",
                      "messages": [{"role": "system", "content": self.policy.rubric},
                                   {"role": "user", "content": f"Question:\n{event.question}\n\n"
                                                               f"Answer:\n{event.answer}"}]})
            response.raise_for_status()
            reply = response.json()["choices"][0]["message"]["content"] or ""
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            self.judgements.labels("judge_failed").inc()
            log.warning("quality.judge_failed", endpoint=event.endpoint, error=str(exc)[:300])
            return None
        try:
            score = (score_of(reply) - 1) / 4
        except ValueError as exc:
            self.judgements.labels("no_score").inc()
            log.warning("quality.no_score", endpoint=event.endpoint, error=str(exc))
            return None
        self.judgements.labels("scored").inc()
        return self.record(event.endpoint, event.version or "", score)

    def record(self, endpoint: str, version: str, score: float) -> float | None:
        name = self.endpoints(endpoint)
        if name == "__other__":
            return None  # over the cap: not tracked, never mixed into another endpoint's score
        series = (name, version[:128])
        if series not in self.windows and len(self.windows) >= MAX_SERIES:
            self.judgements.labels("untracked").inc()
            return None
        window = self.windows.setdefault(series, deque(maxlen=self.policy.window))
        window.append(score)
        mean = sum(window) / len(window)
        self.score.labels(*series).set(mean)
        return mean

    def forget(self, endpoint: str) -> None:
        for series in [s for s in self.windows if s[0] == endpoint]:
            del self.windows[series]
            with contextlib.suppress(KeyError):
                self.score.remove(*series)
        self.endpoints.seen.discard(endpoint)
