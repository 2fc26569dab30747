"""The canary's numbers come from the router's own ``inference.completed`` events: the target
names are the router's, so a renamed provider cannot silently starve the verdict."""

from __future__ import annotations

import time

from contracts import InferenceCompleted
from services.inference_router.config import Target
from services.inference_router.endpoints import provider_name
from services.provisioner.endpoints.canary import CanaryBook


def completed(
    endpoint: str, version: str, *, ok: bool, ms: float, target: str | None = None
) -> InferenceCompleted:
    routed = Target(provider=provider_name(endpoint, version), model=endpoint, version=version)
    return InferenceCompleted(
        tenant="legal", source="inference-router", request_id="r", key_id="k", model=endpoint,
        target=target or routed.name, version=version, latency_ms=ms, status="ok" if ok else "error",
        operation="predict")


async def test_versions_are_counted_apart_from_the_routers_target_names() -> None:
    book, since = CanaryBook(), time.time() - 1
    await book.ingest([completed("clause-risk", "1", ok=True, ms=10 + i) for i in range(20)])
    await book.ingest([completed("clause-risk", "2", ok=i % 3 != 0, ms=50) for i in range(9)])
    stats = book.compare("clause-risk", stable="1", canary="2", since_s=since)
    # p95 by nearest rank: the 19th of 20 latencies (10..29 ms)
    assert (stats.stable.requests, stats.stable.errors, stats.stable.p95_ms) == (20, 0, 28)
    assert (stats.canary.requests, stats.canary.errors) == (9, 3)


async def test_a_version_refusing_requests_counts_them_as_errors() -> None:
    book, since = CanaryBook(), time.time() - 1
    refused = completed("clause-risk", "2", ok=True, ms=1).model_copy(update={"status": "rejected"})
    await book.ingest([refused, completed("clause-risk", "2", ok=True, ms=1)])
    assert (book.stats("clause-risk", "2", since).requests, book.stats("clause-risk", "2", since).errors) \
        == (2, 1)


async def test_external_models_and_refusals_before_routing_are_not_counted() -> None:
    book, since = CanaryBook(), time.time() - 1
    await book.ingest([completed("gpt", "1", ok=True, ms=5, target="openai/gpt-4o-mini")])
    quota = completed("clause-risk", "1", ok=True, ms=1, target="-").model_copy(update={"status": "rejected"})
    await book.ingest([quota])
    assert book.stats("clause-risk", "1", since).requests == 0
    assert book.stats("gpt", "1", since).requests == 0


async def test_only_the_window_counts() -> None:
    book = CanaryBook()
    await book.ingest([completed("e", "1", ok=False, ms=5)])
    assert book.stats("e", "1", time.time() + 1).requests == 0
    assert book.stats("e", "1", time.time() - 5).errors == 1
