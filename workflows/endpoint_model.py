"""What EndpointWorkflow remembers and decides with: its state (carried across continue-as-new),
its tuning, what its activities exchange, and the canary verdict (pure, so it is tested
without Temporal)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, Field

from contracts import EndpointRequested
from contracts.endpoints import ServingKind


class Tuning(BaseModel):
    """Knobs with defaults a platform team can change per deployment (tests shrink them)."""

    canary_window_s: int = Field(default=60, gt=0, description="Traffic window per canary verdict.")
    canary_max_windows: int = Field(default=5, gt=0, description="Windows without enough traffic, "
                                    "then the canary is rolled back as unproven.")
    canary_min_requests: int = Field(default=20, gt=0, description="Canary requests needed to judge.")
    max_error_rate_increase: float = Field(default=0.05, ge=0, description="Canary error rate may "
                                           "exceed the stable one by this much (absolute).")
    max_latency_ratio: float = Field(default=1.5, gt=1, description="Canary p95 may be this many "
                                     "times the stable p95 (plus 50 ms of noise).")
    target_in_flight: int = Field(default=4, gt=0, description="Requests in flight per replica "
                                  "before another replica is added.")
    scale_down_after_s: int = Field(default=30, gt=0, description="Quiet time before a replica "
                                    "above the minimum is removed.")
    replica_start_timeout_s: int = Field(default=120, gt=0)
    events_before_continue: int = Field(default=400, gt=0, description="Decisions per run before "
                                        "continue-as-new keeps the history short.")


class VersionSpec(BaseModel):
    """A scanned, servable version of the endpoint's model."""

    version: str
    model: str
    kind: ServingKind
    model_dir: str
    request: EndpointRequested


class ReplicaRef(BaseModel):
    replica_id: str
    version: str
    url: str
    started_at_s: float


class EndpointState(BaseModel):
    endpoint: str
    team: str
    status: str = "deploying"
    stable: VersionSpec | None = None
    previous: VersionSpec | None = None
    canary: VersionSpec | None = None
    canary_percent: int = 0
    canary_since_s: float = 0
    canary_windows: int = 0
    replicas: list[ReplicaRef] = Field(default_factory=list)
    last_activity_s: float = 0
    last_scale_s: float = 0
    in_flight: int = 0
    pending: list[EndpointRequested] = Field(default_factory=list)
    replica_seq: int = 0
    reason: str = ""

    def of(self, version: str) -> list[ReplicaRef]:
        return [r for r in self.replicas if r.version == version]

    def idle_deadline_s(self) -> float | None:
        """When the endpoint scales to zero if nothing happens; None when it must not."""
        stable = self.stable
        if stable is None or not stable.request.scale_to_zero or not self.replicas or self.canary:
            return None
        if stable.request.min_replicas > 0:
            return None
        return self.last_activity_s + stable.request.idle_s

    def canary_deadline_s(self, tuning: Tuning) -> float | None:
        if self.canary is None:
            return None
        return self.canary_since_s + tuning.canary_window_s * (self.canary_windows + 1)


class EndpointInput(BaseModel):
    state: EndpointState
    tuning: Tuning = Field(default_factory=Tuning)


class Prepared(BaseModel):
    """The security gate's answer for one requested version."""

    allowed: bool
    reason: str = ""
    model_dir: str = ""
    kind: ServingKind = "chat"


class ReplicaStart(BaseModel):
    endpoint: str
    team: str
    version: str
    replica_id: str
    model_dir: str


class ReplicaStop(BaseModel):
    endpoint: str
    team: str
    replica: ReplicaRef
    gpus: int = 0
    gpu_type: str | None = None
    reason: str = ""


class ActivityReport(BaseModel):
    """What the provisioner's watcher saw at the endpoint's replicas."""

    at_s: float
    in_flight: int = Field(default=0, ge=0)
    requests: int = Field(default=0, ge=0)


class VersionStats(BaseModel):
    requests: int = 0
    errors: int = 0
    p95_ms: float = 0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class CanaryQuery(BaseModel):
    endpoint: str
    stable: str
    canary: str
    since_s: float


class CanaryStats(BaseModel):
    stable: VersionStats
    canary: VersionStats


class CanaryVerdict(BaseModel):
    outcome: Literal["promoted", "rolled_back", "wait"]
    reason: str
    stats: CanaryStats


def judge(stats: CanaryStats, tuning: Tuning, *, last_window: bool) -> CanaryVerdict:
    """Promote a canary only on evidence: enough requests, error rate and p95 latency within
    bounds of the stable version's over the same window."""
    canary, stable = stats.canary, stats.stable
    if canary.requests < tuning.canary_min_requests:
        if not last_window:
            return CanaryVerdict(outcome="wait", stats=stats, reason=(
                f"{canary.requests} canary requests so far, {tuning.canary_min_requests} needed"))
        return CanaryVerdict(outcome="rolled_back", stats=stats, reason=(
            f"unproven: only {canary.requests} canary requests in {tuning.canary_max_windows} "
            f"windows ({tuning.canary_min_requests} needed)"))
    if canary.error_rate > stable.error_rate + tuning.max_error_rate_increase:
        return CanaryVerdict(outcome="rolled_back", stats=stats, reason=(
            f"canary error rate {canary.error_rate:.1%} vs stable {stable.error_rate:.1%} "
            f"(allowed +{tuning.max_error_rate_increase:.0%})"))
    latency_cap = stable.p95_ms * tuning.max_latency_ratio + 50
    if stable.requests and canary.p95_ms > latency_cap:
        return CanaryVerdict(outcome="rolled_back", stats=stats, reason=(
            f"canary p95 {canary.p95_ms:.0f} ms vs stable {stable.p95_ms:.0f} ms "
            f"(allowed up to {latency_cap:.0f} ms)"))
    return CanaryVerdict(outcome="promoted", stats=stats, reason=(
        f"canary healthy over {canary.requests} requests: error rate {canary.error_rate:.1%} "
        f"(stable {stable.error_rate:.1%}), p95 {canary.p95_ms:.0f} ms (stable {stable.p95_ms:.0f} ms)"))


def desired_replicas(in_flight: int, *, current: int, minimum: int, maximum: int, target: int) -> int:
    """Replicas wanted for the requests in flight, moving one step at a time."""
    wanted = max(minimum, 1, math.ceil(in_flight / target))
    wanted = min(wanted, maximum)
    if wanted > current:
        return current + 1
    if wanted < current:
        return current - 1
    return current
