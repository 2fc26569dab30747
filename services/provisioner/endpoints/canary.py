"""The canary's numbers: error rate and p95 latency per endpoint version, from the router's
``inference.completed`` events.

Kept in memory for the last hour (bounded per version): a verdict needs one analysis window of
traffic, and a provisioner restart only means the next window starts empty — the workflow then
waits for enough requests again instead of judging on nothing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from contracts import InferenceCompleted
from workflows.endpoint_model import CanaryStats, VersionStats

KEEP_S = 3600.0
KEEP_PER_VERSION = 50_000
PLATFORM_PREFIX = "platform/"


class CanaryBook:
    def __init__(self) -> None:
        # (endpoint, version) -> (monotonic-free wall time, ok, latency ms)
        self._seen: dict[tuple[str, str], deque[tuple[float, bool, float]]] = {}

    async def ingest(self, events: list[Any]) -> dict[int, str]:
        """A batch from the bus; requests to platform endpoints are remembered, others ignored."""
        for event in events:
            if isinstance(event, InferenceCompleted):
                self.record(event)
        return {}

    def record(self, event: InferenceCompleted) -> None:
        # target "platform/<endpoint>/<version>/<model>": the router's provider, then the model.
        # A request the version itself refused (4xx: "rejected" with a target) counts against it:
        # the stable version answering the same callers is the baseline. Refusals before routing
        # (quota, rate limit) have no target and are not the version's doing.
        parts = event.target.split("/")
        if parts[0] + "/" != PLATFORM_PREFIX or len(parts) < 3 or event.status == "cancelled":
            return
        endpoint, version = parts[1], event.version or parts[2]
        samples = self._seen.setdefault((endpoint, version), deque(maxlen=KEEP_PER_VERSION))
        samples.append((event.occurred_at.timestamp(), event.status == "ok", event.latency_ms))
        while samples and samples[0][0] < time.time() - KEEP_S:
            samples.popleft()

    def compare(self, endpoint: str, *, stable: str, canary: str, since_s: float) -> CanaryStats:
        return CanaryStats(stable=self.stats(endpoint, stable, since_s),
                           canary=self.stats(endpoint, canary, since_s))

    def stats(self, endpoint: str, version: str, since_s: float) -> VersionStats:
        window = [(ok, ms) for at, ok, ms in self._seen.get((endpoint, version), ()) if at >= since_s]
        if not window:
            return VersionStats()
        latencies = sorted(ms for _, ms in window)
        p95 = latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
        return VersionStats(requests=len(window), errors=sum(1 for ok, _ in window if not ok),
                            p95_ms=round(p95, 3))
