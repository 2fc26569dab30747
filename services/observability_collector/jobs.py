"""Job start latency from the bus: seconds from ``jobs.requested`` to the job's first
``jobs.started`` (the job-start-latency SLO in policies/slos.yaml), labelled ``queued`` (a
``jobs.queued`` came between: it waited for GPUs, which is not the platform being slow) and the
backend. At most ``max_pending`` jobs are remembered between the two (the oldest forgotten)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from prometheus_client import CollectorRegistry, Histogram

from contracts import JobCompleted, JobFailed, JobQueued, JobRejected, JobRequested, JobStarted, JobTerminated

BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
BACKENDS = ("local", "ray", "kubernetes")


class JobStarts:
    def __init__(self, registry: CollectorRegistry, *, max_pending: int = 20_000) -> None:
        self.seconds = Histogram("aicloud_job_start_seconds", "From jobs.requested to its first "
                                 "jobs.started.", ["queued", "backend"], buckets=BUCKETS,
                                 registry=registry)
        self._pending: OrderedDict[str, tuple[datetime, bool]] = OrderedDict()
        self._max = max_pending

    def observe(self, event: object) -> None:
        if isinstance(event, JobRequested):
            self._pending[event.job_id] = (event.occurred_at, False)
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
        elif isinstance(event, JobQueued) and event.job_id in self._pending:
            self._pending[event.job_id] = (self._pending[event.job_id][0], True)
        elif isinstance(event, JobStarted) and event.job_id in self._pending:
            requested, queued = self._pending.pop(event.job_id)  # a resumed job's start: not again
            backend = event.backend.split("/", 1)[0]
            self.seconds.labels(queued=str(queued).lower(),
                                backend=backend if backend in BACKENDS else "other").observe(
                max((event.occurred_at - requested).total_seconds(), 0.0))
        elif isinstance(event, JobRejected | JobCompleted | JobFailed | JobTerminated):
            self._pending.pop(event.job_id, None)
