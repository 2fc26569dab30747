"""Input drift of the platform's own endpoints, from the router's ``inference.completed`` events.

Per endpoint, a reference (its first ``reference_size`` successful requests after a deploy) is
compared with a sliding live window (the last ``live_size`` requests after the reference) by the
population stability index over input length (``tokens_in``), binned at the reference's deciles:

    PSI = sum over bins of (live% - ref%) * ln(live% / ref%)

exported as ``aicloud_endpoint_drift_score{endpoint, feature="input_tokens"}``. Deciles make the
bins scale-free (log lengths would give the same bins), so no bucket layout is assumed.

Embedding endpoints are also watched by what they embed: each of their events carries the
router's sketch of its vectors (a projection on four fixed random directions); each direction
gets its own reference and live window, and ``feature="embedding"`` is the largest of the four
PSIs, so a shift along any of them shows.

Sample sizes matter more than they seem: two samples of one distribution score about
``(bins - 1) * (1/reference + 1/live)`` by chance alone, 0.09 for 200 against 200 and 0.2 for
200 against 50, which is the alert threshold. The defaults (1,000 against a full window of 500,
chance level about 0.03) keep an unshifted endpoint well under it, and the gauge appears only
once both windows are full: no score is better than a score made of noise.

Memory is bounded: at most ``max_endpoints`` endpoints are tracked (the rest are not tracked at
all, counted in ``aicloud_metric_label_overflow_total{label="endpoint"}``, never mixed into one
series), each holding per window (one for lengths, four for an embedding sketch) one reference
being filled or ten bin shares, and a deque of bin numbers.
Each event costs a bisect and two counter updates; the score is recomputed every ``every`` events.
State is in memory: a collector restart starts every reference again.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge

from contracts import InferenceCompleted
from services.observability_collector.genai import MAX_LABEL_CHARS, OTHER, PLATFORM_PROVIDER, LabelCap

DRIFT_THRESHOLD = 0.2  # PSI conventions: < 0.1 no change, 0.1-0.2 moderate, > 0.2 a significant shift
FEATURE = "input_tokens"
EMBEDDING = "embedding"  # the router's sketch of an embedding endpoint's answers (its sketch.py)
EPSILON = 1e-4  # share given to an empty bin: ln(0) is undefined, and one empty bin is not infinite drift
RECENT_VERSIONS = 4  # a canary interleaves two versions: only an unseen one is a new deploy


def endpoint_of(target: str) -> str | None:
    """The endpoint of a router target ``platform/<endpoint>[/<version>/<model>]``; None for
    any other provider."""
    provider, _, rest = target.partition("/")
    endpoint = rest.partition("/")[0]
    return endpoint[:MAX_LABEL_CHARS] if provider == PLATFORM_PROVIDER and endpoint else None


def decile_edges(values: Sequence[float]) -> tuple[float, ...]:
    """Cut points at the deciles, each once: a length most requests share is one edge, not nine."""
    ordered = sorted(values)
    return tuple(sorted({ordered[len(ordered) * k // 10] for k in range(1, 10)}))


def psi(expected: Sequence[float], counts: Sequence[int], total: int) -> float:
    """Population stability index of live ``counts`` (``total`` of them) against the reference
    shares ``expected``; empty bins count as ``EPSILON``."""
    score = 0.0
    for ref, count in zip(expected, counts, strict=True):
        live = max(count / total, EPSILON)
        score += (live - ref) * math.log(live / ref)
    return score


@dataclass
class _Window:
    """One feature of one endpoint since its last deploy: the reference filling, then the live
    window sliding."""

    live_size: int
    reference: list[float] = field(default_factory=list)
    edges: tuple[float, ...] | None = None
    expected: tuple[float, ...] = ()
    live: deque[int] = field(init=False)  # bin numbers, oldest first
    counts: list[int] = field(default_factory=list)
    since_scored: int = 0

    def __post_init__(self) -> None:
        self.live = deque(maxlen=self.live_size)

    def fix_reference(self) -> None:
        self.edges = decile_edges(self.reference)
        counts = [0] * (len(self.edges) + 1)
        for value in self.reference:
            counts[bisect_right(self.edges, value)] += 1
        self.expected = tuple(max(c / len(self.reference), EPSILON) for c in counts)
        self.counts = [0] * len(counts)
        self.reference = []  # the shares are all the score needs

    def add_live(self, value: float, edges: tuple[float, ...]) -> None:
        if len(self.live) == self.live_size:
            self.counts[self.live[0]] -= 1
        bin_ = bisect_right(edges, value)
        self.live.append(bin_)
        self.counts[bin_] += 1
        self.since_scored += 1

    def psi(self) -> float:
        return psi(self.expected, self.counts, len(self.live))


@dataclass
class _Endpoint:
    windows: dict[str, list[_Window]] = field(default_factory=dict)  # feature -> one per component
    versions: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_VERSIONS))
    shown: set[str] = field(default_factory=set)


class DriftMonitor:
    def __init__(self, registry: CollectorRegistry, *, reference_size: int = 1000,
                 live_size: int = 500, min_live: int | None = None, every: int = 20,
                 max_endpoints: int = 500) -> None:
        self.score = Gauge("aicloud_endpoint_drift_score", "Population stability index of the "
                           "endpoint's recent inputs against its first requests after the deploy "
                           f"(> {DRIFT_THRESHOLD}: a significant shift), by feature: input_tokens, "
                           "embedding (the largest over the sketch's directions).",
                           ["endpoint", "feature"], registry=registry)
        self.endpoints = LabelCap("endpoint", max_endpoints)
        self._tracked: dict[str, _Endpoint] = {}
        self._reference_size, self._live_size = reference_size, live_size
        self._min_live = live_size if min_live is None else min(min_live, live_size)
        self._every = every

    def observe(self, event: InferenceCompleted) -> None:
        # failed requests often report no usage: their zero lengths would read as drift
        if event.status != "ok" or (name := endpoint_of(event.target)) is None:
            return
        if (state := self._state(name)) is None:
            return
        version = (event.version or "")[:MAX_LABEL_CHARS]
        if version and version not in state.versions:
            if state.versions:  # a redeploy: what came before says nothing about the new model
                self._hide(name, state)
                state.windows.clear()
            state.versions.append(version)
        self._add(name, state, FEATURE, (event.tokens_in,))
        if event.embedding_sketch:
            self._add(name, state, EMBEDDING, event.embedding_sketch)

    def forget(self, endpoint: str) -> None:
        """The endpoint is gone: its series and its slot under the cap go too."""
        state = self._tracked.pop(endpoint, None)
        if state is not None:
            self._hide(endpoint, state)
        self.endpoints.seen.discard(endpoint)

    @property
    def tracked(self) -> int:
        return len(self._tracked)

    def _state(self, name: str) -> _Endpoint | None:
        state = self._tracked.get(name)
        if state is None and self.endpoints(name) != OTHER:
            state = self._tracked[name] = _Endpoint()
        return state

    def _add(self, name: str, state: _Endpoint, feature: str, values: Sequence[float]) -> None:
        windows = state.windows.setdefault(feature, [])
        if len(windows) != len(values):  # a sketch of another size: start this feature again
            self._hide_feature(name, state, feature)
            windows[:] = [_Window(self._live_size) for _ in values]
        for window, value in zip(windows, values, strict=True):
            if window.edges is None:
                window.reference.append(value)
                if len(window.reference) >= self._reference_size:
                    window.fix_reference()
            else:
                window.add_live(value, window.edges)
        first = windows[0]
        if first.edges is None or len(first.live) < self._min_live:
            return
        if first.since_scored >= self._every or feature not in state.shown:
            self.score.labels(endpoint=name, feature=feature).set(max(w.psi() for w in windows))
            for window in windows:
                window.since_scored = 0
            state.shown.add(feature)

    def _hide(self, name: str, state: _Endpoint) -> None:
        for feature in list(state.shown):
            self._hide_feature(name, state, feature)

    def _hide_feature(self, name: str, state: _Endpoint, feature: str) -> None:
        if feature in state.shown:
            self.score.remove(name, feature)
            state.shown.discard(feature)
