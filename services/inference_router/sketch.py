"""A few numbers that stand for what a platform embedding endpoint was asked to embed, so the
observability-collector can watch its inputs drift without ever seeing them.

The request's vectors (each scaled to unit length, then averaged and scaled again) are projected
on ``DIMENSIONS`` fixed random directions of their space: a random projection keeps distances
between inputs on average (Johnson-Lindenstrauss), so a shift in what is embedded is a shift in
these numbers' distribution, which the collector compares with the endpoint's first requests by
PSI, as it does for input lengths. The directions are drawn from a generator seeded by the
vectors' length, so every router draws the same ones and no state is kept. Only float vectors
are sketched (``encoding_format: base64`` answers are not decoded for this).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

DIMENSIONS = 4
MAX_VECTOR = 16_384  # longer is no embedding model's: not sketched
MAX_VECTORS = 16  # a large batch is sketched by its first vectors (it costs ~20 us, not more)


@lru_cache(maxsize=16)
def directions(length: int) -> np.ndarray:
    """``DIMENSIONS`` unit rows, the same in every router for vectors of this length."""
    rows = np.random.default_rng(length).standard_normal((DIMENSIONS, length))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def embedding_sketch(payload: dict[str, Any]) -> list[float] | None:
    """The sketch of an OpenAI-shaped embeddings answer; None when it holds no float vectors of
    one length (or a number that is not finite, or a zero vector)."""
    data = payload.get("data")
    if not isinstance(data, list) or not data:
        return None
    vectors = [item.get("embedding") for item in data[:MAX_VECTORS] if isinstance(item, dict)]
    if not vectors or not all(isinstance(v, list) and 0 < len(v) <= MAX_VECTOR for v in vectors):
        return None
    try:
        matrix = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):  # ragged, or not numbers
        return None
    if matrix.ndim != 2 or not np.isfinite(matrix).all():
        return None
    norms = np.linalg.norm(matrix, axis=1)
    if not norms.all():
        return None
    mean = (matrix / norms[:, None]).mean(axis=0)
    size = np.linalg.norm(mean)
    if size == 0:
        return None
    return [round(float(v), 6) for v in np.clip(directions(matrix.shape[1]) @ (mean / size), -1, 1)]
