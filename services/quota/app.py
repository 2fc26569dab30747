"""quota wiring: subjects to handlers, nothing else."""

from __future__ import annotations

from functools import partial

from contracts import JobCompleted, JobFailed, JobRequested, JobTerminated
from services.kit.runtime import Service, run
from services.kit.settings import load_settings
from services.quota import handlers
from services.quota.repo import MIGRATIONS
from services.quota.settings import QuotaSettings


def build(settings: QuotaSettings) -> Service:
    service = Service(settings, migrations=MIGRATIONS, title="aicloud quota")
    service.consume(
        JobRequested,
        partial(
            handlers.on_job_requested,
            quota_for=settings.team_gpu_quotas,
            default_quota=settings.default_gpu_quota,
        ),
    )
    for ended in (JobCompleted, JobFailed, JobTerminated):
        service.consume(ended, handlers.on_job_ended)
    return service


def main() -> None:
    run(build, load_settings(QuotaSettings))
