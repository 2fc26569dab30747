"""EndpointWorkflow: one entity workflow per endpoint (workflow id = endpoint name).

It scans and deploys versions (``deploy`` signal; the first arrives with signal-with-start),
runs replicas through the provisioner's activities, announces them to the router, scales with
the requests in flight, scales to zero after the idle period and back on ``wake`` (the router
holds the request meanwhile), runs canary analysis and rolls back or promotes, and continues
as new before its history grows long. Every replica that stops is metered (usage.recorded).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from contracts import (
        EndpointDeleted,
        EndpointFailed,
        EndpointRequested,
        EndpointRetired,
        EndpointScaledToZero,
        Envelope,
    )
    from workflows import endpoint_events
    from workflows.endpoint_model import (
        ActivityReport,
        CanaryQuery,
        CanaryStats,
        CanaryVerdict,
        EndpointInput,
        EndpointState,
        Prepared,
        ReplicaRef,
        ReplicaStart,
        ReplicaStop,
        VersionSpec,
        desired_replicas,
        judge,
    )
    from workflows.publish import TYPED_PUBLISH_PATCH, Publish

QUICK_TIMEOUT = timedelta(seconds=30)
# the slow activities heartbeat: a provisioner that died mid-deploy is noticed this soon
HEARTBEAT = timedelta(seconds=10)
QUICK_RETRY = RetryPolicy(maximum_attempts=20, maximum_interval=timedelta(seconds=10))


@workflow.defn(name="EndpointWorkflow")
class EndpointWorkflow:
    @workflow.init
    def __init__(self, inp: EndpointInput) -> None:
        # State exists before the first signal (signal-with-start delivers ``deploy`` early).
        self.s = inp.state
        self._dirty = False
        self._wake = False
        self._rollback: str | None = None
        self._delete: str | None = None
        self._lost: set[str] = set()
        self._decisions = 0

    # -- signals and query ------------------------------------------------------------------
    @workflow.signal
    def deploy(self, request: EndpointRequested) -> None:
        self.s.pending.append(request)
        self._dirty = True

    @workflow.signal
    def wake(self) -> None:
        self._wake = self._dirty = True

    @workflow.signal
    def activity(self, report: ActivityReport) -> None:
        self.s.last_activity_s = max(self.s.last_activity_s, report.at_s)
        self.s.in_flight = report.in_flight
        self._dirty = True

    @workflow.signal
    def rollback(self, reason: str) -> None:
        self._rollback = reason or "rolled back by its owner"
        self._dirty = True

    @workflow.signal
    def delete(self, reason: str) -> None:
        self._delete = reason or "deleted"
        self._dirty = True

    @workflow.signal
    def replicas_lost(self, replica_ids: list[str]) -> None:
        # Only replicas this workflow already holds: a start still in flight when the
        # provisioner died is retried by Temporal and brings back a live replica of its own.
        known = {r.replica_id for r in self.s.replicas}
        self._lost.update(set(replica_ids) & known)
        self._dirty = True

    @workflow.query
    def state(self) -> EndpointState:
        return self.s

    # -- the loop ---------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: EndpointInput) -> str:
        s, tuning = self.s, inp.tuning
        while True:
            self._dirty = False
            now = workflow.now().timestamp()
            if self._delete is not None:
                await self._shutdown(self._delete)
                return "deleted"
            if s.pending:
                await self._deploy(s.pending.pop(0))
                if s.stable is None and not s.pending:
                    return "failed"
            elif self._lost:
                await self._replace_lost()
            elif self._rollback is not None:
                reason, self._rollback = self._rollback, None
                await self._roll_back(reason)
            elif self._wake:
                self._wake = False
                if s.stable is not None and not s.replicas:
                    s.last_activity_s = now
                    await self._scale_stable(max(1, s.stable.request.min_replicas))
            elif (due := s.canary_deadline_s(tuning)) is not None and now >= due:
                await self._analyse(inp)
            elif (idle := s.idle_deadline_s()) is not None and now >= idle and s.in_flight == 0:
                await self._scale_to_zero(now - s.last_activity_s)
            elif s.stable is not None and s.replicas and s.canary is None:
                await self._autoscale(inp, now)
            self._decisions += 1
            info = workflow.info()
            if self._decisions >= tuning.events_before_continue or info.is_continue_as_new_suggested():
                workflow.continue_as_new(EndpointInput(state=s, tuning=tuning))
            if self._dirty or self._wake or self._delete or self._lost or s.pending:
                continue
            deadlines = [d for d in (s.canary_deadline_s(tuning), s.idle_deadline_s()) if d is not None]
            if s.replicas and len(s.of(s.stable.version if s.stable else "")) > 1:
                deadlines.append(s.last_scale_s + tuning.scale_down_after_s)
            timeout = max(0.05, min(deadlines) - workflow.now().timestamp()) if deadlines else None
            try:
                await workflow.wait_condition(lambda: self._dirty, timeout=timeout)
            except TimeoutError:
                pass

    # -- deploy, canary, rollback -------------------------------------------------------------
    async def _deploy(self, request: EndpointRequested) -> None:
        s = self._state()
        s.status = "scanning"
        prepared = await workflow.execute_activity(
            "prepare_endpoint_version", request, result_type=Prepared,
            start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(maximum_attempts=3))
        if not prepared.allowed:
            await self._fail(request.version, prepared.reason)
            return
        spec = VersionSpec(version=request.version, model=request.model, kind=prepared.kind,
                           model_dir=prepared.model_dir, request=request)
        s.last_activity_s = workflow.now().timestamp()
        s.status = "provisioning"
        canary = s.stable is not None and request.canary_percent > 0 and s.stable.version != spec.version
        if canary:
            await self._retire_canary("replaced by a newer canary")
            if not s.of(s.stable.version):  # type: ignore[union-attr]
                await self._scale_stable(1)
            if not await self._start(spec, 1):
                return
            s.canary, s.canary_percent = spec, request.canary_percent
            s.canary_since_s, s.canary_windows = workflow.now().timestamp(), 0
            await self._announce(spec, weight=request.canary_percent)
            await self._announce(s.stable, weight=100 - request.canary_percent)  # type: ignore[arg-type]
            s.status = "canary"
            return
        if not await self._start(spec, max(1, request.min_replicas)):
            return
        await self._announce(spec, weight=100)
        old, s.stable = s.stable, spec
        await self._retire_canary(f"replaced by version {spec.version}")
        if old is not None and old.version != spec.version:
            s.previous = old
            await self._stop_version(old, f"replaced by version {spec.version}")
        s.status = "ready"

    async def _analyse(self, inp: EndpointInput) -> None:
        s, tuning = self._state(), inp.tuning
        assert s.canary is not None and s.stable is not None
        stats = await workflow.execute_activity(
            "canary_stats", CanaryQuery(endpoint=s.endpoint, stable=s.stable.version,
                                        canary=s.canary.version, since_s=s.canary_since_s),
            result_type=CanaryStats, start_to_close_timeout=QUICK_TIMEOUT, retry_policy=QUICK_RETRY)
        verdict = judge(stats, tuning, last_window=s.canary_windows + 1 >= tuning.canary_max_windows)
        if verdict.outcome == "wait":
            s.canary_windows += 1
            return
        canary, stable = s.canary, s.stable
        if verdict.outcome == "promoted":
            await self._announce(canary, weight=100)
            s.canary, s.stable, s.previous = None, canary, stable
            await self._stop_version(stable, f"promoted version {canary.version}")
        else:
            await self._retire_canary(verdict.reason)
        await self._emit(endpoint_events.canary_decided(self._ids(), stable=stable.version,
                                                        canary=canary.version, verdict=verdict))
        s.status = "ready"

    async def _roll_back(self, reason: str) -> None:
        """A running canary is dropped; otherwise the previous version comes back."""
        s = self._state()
        if s.canary is not None:
            version = s.canary.version
            await self._retire_canary(reason)
            verdict = CanaryVerdict(outcome="rolled_back", reason=reason,
                                    stats=CanaryStats.model_validate({"stable": {}, "canary": {}}))
            await self._emit(endpoint_events.canary_decided(
                self._ids(), stable=s.stable.version if s.stable else "", canary=version, verdict=verdict))
        elif s.previous is not None and s.stable is not None:
            back, current = s.previous, s.stable
            if not await self._start(back, max(1, back.request.min_replicas)):
                return
            await self._announce(back, weight=100)
            s.stable, s.previous = back, None
            await self._stop_version(current, f"rolled back to version {back.version}: {reason}")
        s.status = "ready" if s.replicas else s.status

    async def _retire_canary(self, reason: str) -> None:
        s = self._state()
        if s.canary is None:
            return
        canary, s.canary, s.canary_percent = s.canary, None, 0
        if s.stable is not None and s.of(s.stable.version):
            await self._announce(s.stable, weight=100)
        await self._stop_version(canary, reason)

    # -- scaling ------------------------------------------------------------------------------
    async def _autoscale(self, inp: EndpointInput, now: float) -> None:
        s, tuning = self._state(), inp.tuning
        assert s.stable is not None
        current = len(s.of(s.stable.version))
        request = s.stable.request
        wanted = desired_replicas(s.in_flight, current=current, minimum=request.min_replicas,
                                  maximum=request.max_replicas, target=tuning.target_in_flight)
        if wanted < current and now - max(s.last_scale_s, s.last_activity_s) < tuning.scale_down_after_s:
            return
        if wanted != current:
            await self._scale_stable(wanted)

    async def _scale_stable(self, count: int) -> None:
        s = self._state()
        assert s.stable is not None
        running = s.of(s.stable.version)
        if count > len(running):
            if not await self._start(s.stable, count - len(running)):
                return
        else:
            for replica in running[count:]:
                await self._stop_replica(replica, "scaled down")
        s.last_scale_s = workflow.now().timestamp()
        await self._announce(s.stable, weight=100 - s.canary_percent if s.canary else 100)
        s.status = "canary" if s.canary else "ready"

    async def _scale_to_zero(self, idle_s: float) -> None:
        s = self._state()
        assert s.stable is not None
        # The router holds new requests from here on; only then do the replicas stop.
        await self._emit(EndpointScaledToZero(model=s.stable.model, kind=s.stable.kind,
                                              idle_s=round(idle_s, 3), **self._ids()))
        for replica in list(s.replicas):
            await self._stop_replica(replica, "scaled to zero")
        s.status = "scaled_to_zero"

    async def _replace_lost(self) -> None:
        s = self._state()
        lost, self._lost = self._lost, set()
        gone = [r for r in s.replicas if r.replica_id in lost]
        for replica in gone:
            await self._stop_replica(replica, "replica lost")
        for spec in (s.stable, s.canary):
            if spec is not None and any(r.version == spec.version for r in gone):
                want = len([r for r in gone if r.version == spec.version])
                if await self._start(spec, want):
                    weight = s.canary_percent if spec is s.canary else 100 - s.canary_percent
                    await self._announce(spec, weight=weight)

    async def _shutdown(self, reason: str) -> None:
        s = self._state()
        await self._emit(EndpointDeleted(reason=reason or "deleted", **self._ids()))
        for replica in list(s.replicas):
            await self._stop_replica(replica, reason)
        s.status, s.reason = "deleted", reason

    # -- replicas and events ------------------------------------------------------------------
    async def _start(self, spec: VersionSpec, count: int) -> bool:
        """Start ``count`` replicas of a version; on failure stop what started and say why."""
        s = self._state()
        started: list[ReplicaRef] = []
        for _ in range(count):
            s.replica_seq += 1
            replica_id = f"{s.endpoint}-{spec.version}-{s.replica_seq}"
            try:
                ref = await workflow.execute_activity(
                    "start_endpoint_replica",
                    ReplicaStart(endpoint=s.endpoint, team=s.team, version=spec.version,
                                 replica_id=replica_id, model_dir=spec.model_dir),
                    result_type=ReplicaRef, start_to_close_timeout=timedelta(seconds=180),
                    heartbeat_timeout=HEARTBEAT, retry_policy=RetryPolicy(maximum_attempts=3))
            except ActivityError as exc:
                for replica in started:
                    await self._stop_replica(replica, "deploy failed")
                await self._fail(spec.version, f"replica did not start: {exc.cause or exc}")
                return False
            started.append(ref)
            s.replicas.append(ref)
        return True

    async def _stop_version(self, spec: VersionSpec, reason: str) -> None:
        await self._emit(EndpointRetired(version=spec.version, reason=reason, **self._ids()))
        for replica in self._state().of(spec.version):
            await self._stop_replica(replica, reason)

    async def _stop_replica(self, replica: ReplicaRef, reason: str) -> None:
        s = self._state()
        spec = s.stable or s.canary
        request = spec.request if spec is not None else None
        await workflow.execute_activity(
            "stop_endpoint_replica",
            ReplicaStop(endpoint=s.endpoint, team=s.team, replica=replica, reason=reason,
                        gpus=request.gpus if request else 0),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=10))
        s.replicas = [r for r in s.replicas if r.replica_id != replica.replica_id]

    async def _announce(self, spec: VersionSpec, *, weight: int) -> None:
        urls = [r.url for r in self._state().of(spec.version)]
        await self._emit(endpoint_events.ready(spec, self._ids(), urls=urls, weight=weight))

    async def _fail(self, version: str, reason: str) -> None:
        s = self._state()
        s.reason = reason
        if s.stable is None:
            s.status = "failed"
        await self._emit(EndpointFailed(version=version, reason=reason, endpoint_gone=s.stable is None,
                                        **self._ids()))

    def _ids(self) -> dict[str, Any]:
        """A new event's envelope: id and time the same on every replay."""
        s = self._state()
        return endpoint_events.envelope(endpoint=s.endpoint, team=s.team, event_id=workflow.uuid4(),
                                        at=workflow.now())

    async def _emit(self, event: Envelope) -> None:
        """Publish a contract event; runs started before the typed-publish patch keep their
        activity (``emit_endpoint_event``), handed the same ``Publish``."""
        activity = "publish" if workflow.patched(TYPED_PUBLISH_PATCH) else "emit_endpoint_event"
        await workflow.execute_activity(activity, Publish.of(event), start_to_close_timeout=QUICK_TIMEOUT,
                                        retry_policy=QUICK_RETRY)

    def _state(self) -> EndpointState:
        return self.s
