"""Workflows build contract events and hand them to one ``publish`` activity; old string-kind
facts still scheduled from before the change are read and published the same way."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, get_type_hints

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter

from contracts import (
    EndpointCanaryDecided,
    JobCompleted,
    JobRequested,
    JobTerminated,
    NotebookRequested,
    NotebookStopped,
    UsageRecorded,
)
from contracts.jobs import Artifact
from services.provisioner import legacy
from services.provisioner.publish import Publisher
from workflows import job_events
from workflows.endpoint_model import CanaryStats, CanaryVerdict
from workflows.job_events import JobOutputs
from workflows.legacy import EmitInput, EndpointFact, NotebookFact
from workflows.publish import Publish

pytestmark = pytest.mark.unit
REQUEST = JobRequested(tenant="legal", job_id="j-1", command=["python3", "train.py"], gpus=2,
                       requested_by="alice")
OUTPUTS = JobOutputs(artifacts=[Artifact(name="model.json", uri="file:///a/model.json", sha256="ab",
                                         bytes=12)], metrics={"loss": 0.1}, logged_params={"lr": "0.1"})


def through_temporal(value: Any, as_type: Any) -> Any:
    """What an activity receives: the value as Temporal's pydantic converter reads it back."""
    payloads = pydantic_data_converter.payload_converter.to_payloads([value])
    return pydantic_data_converter.payload_converter.from_payloads(payloads, [as_type])[0]


def test_a_published_event_arrives_as_its_own_contract_with_every_field() -> None:
    ids = job_events.envelope(REQUEST, event_id=uuid.uuid4(), at=datetime.now(UTC))
    event = job_events.completed(REQUEST, ids, duration_s=12.5, outputs=OUTPUTS)
    back = through_temporal(Publish.of(event), Publish)
    assert type(back.event) is JobCompleted and back.event == event
    assert back.event.stored_artifacts[0].uri == "file:///a/model.json"


def test_a_publish_naming_an_unknown_or_wrong_subject_is_refused() -> None:
    ids = job_events.envelope(REQUEST, event_id=uuid.uuid4(), at=datetime.now(UTC))
    event = job_events.terminated(REQUEST, ids, duration_s=1, reason="x")
    body = Publish.of(event).model_dump(mode="json")
    with pytest.raises(ValueError, match="no contract travels on subject"):
        Publish.model_validate({**body, "subject": "aicloud.jobs.nonsense.v1"})
    with pytest.raises(ValueError, match=r"travels on aicloud\.jobs\.terminated\.v1"):
        Publish(subject=JobCompleted.SUBJECT, event=event)


def test_an_unknown_termination_reason_is_published_as_cancelled() -> None:
    ids = job_events.envelope(REQUEST, event_id=uuid.uuid4(), at=datetime.now(UTC))
    def reason(given: str) -> str:
        return job_events.terminated(REQUEST, ids, duration_s=3, reason=given).reason

    assert reason("operator said so") == "cancelled" and reason("budget_exhausted") == "budget_exhausted"


@pytest.mark.parametrize("name", ["emit_job_event", "emit_endpoint_event", "emit_notebook_event"])
def test_the_old_activities_read_both_a_publish_and_the_fact_scheduled_before_the_upgrade(name: str) -> None:
    hint = get_type_hints(getattr(Publisher, name))["fact"]
    facts = {"emit_job_event": EmitInput(kind="usage", request=REQUEST, event_id=str(uuid.uuid4()),
                                         started_at_s=100, ended_at_s=160, gpu_type="h100-80gb"),
             "emit_endpoint_event": EndpointFact(kind="retired", endpoint="answerer", team="legal",
                                                 event_id=str(uuid.uuid4()), version="2"),
             "emit_notebook_event": NotebookFact(kind="stopped", event_id=str(uuid.uuid4()),
                                                 request=_notebook(), reason="idle")}
    old = facts[name]
    assert type(through_temporal(old, hint)) is type(old)
    ids = job_events.envelope(REQUEST, event_id=uuid.uuid4(), at=datetime.now(UTC))
    new = Publish.of(job_events.failed(REQUEST, ids, duration_s=1, exit_code=3, reason="exit 3"))
    assert through_temporal(new, hint) == new


def test_an_old_job_fact_becomes_the_event_the_workflow_now_builds() -> None:
    event_id = uuid.uuid4()
    usage = legacy.job_event(EmitInput(kind="usage", request=REQUEST, event_id=str(event_id),
                                       started_at_s=100, ended_at_s=160, gpu_type="h100-80gb",
                                       price_class="spot"))
    assert isinstance(usage, UsageRecorded) and usage.event_id == event_id
    assert (usage.gpus_used, usage.gpu_type, usage.price_class) == (2, "h100-80gb", "spot")
    assert (usage.ended_at - usage.started_at).total_seconds() == 60
    done = legacy.job_event(EmitInput(kind="completed", request=REQUEST, event_id=str(uuid.uuid4()),
                                      started_at_s=100, ended_at_s=130, outputs=OUTPUTS))
    assert isinstance(done, JobCompleted) and done.duration_s == 30
    assert done.artifacts == ["file:///a/model.json"] and done.logged_params == {"lr": "0.1"}
    stopped = legacy.job_event(EmitInput(kind="terminated", request=REQUEST, event_id=str(uuid.uuid4()),
                                         reason="max_runtime", started_at_s=0, ended_at_s=5))
    assert isinstance(stopped, JobTerminated) and stopped.reason == "max_runtime"


def test_an_old_canary_fact_keeps_its_numbers_and_a_verdictless_one_is_refused() -> None:
    stats = CanaryStats.model_validate({"stable": {"requests": 100, "errors": 1, "p95_ms": 20},
                                        "canary": {"requests": 30, "errors": 9, "p95_ms": 25}})
    fact = EndpointFact(kind="canary_decided", endpoint="answerer", team="legal", event_id=str(uuid.uuid4()),
                        version="2", stable="1", reason="too many errors",
                        verdict=CanaryVerdict(outcome="rolled_back", reason="too many errors", stats=stats))
    event = legacy.endpoint_event(fact)
    assert isinstance(event, EndpointCanaryDecided)
    assert (event.canary, event.stable, event.outcome) == ("2", "1", "rolled_back")
    assert event.canary_error_rate == 0.3
    with pytest.raises(ValueError, match="without a verdict"):
        legacy.endpoint_event(fact.model_copy(update={"verdict": None}))


def test_an_old_notebook_fact_becomes_its_contract() -> None:
    fact = NotebookFact(kind="stopped", event_id=str(uuid.uuid4()), request=_notebook(), reason="idle",
                        saved=["a.ipynb"], runtime_s=61.5)
    event = legacy.notebook_event(fact)
    assert isinstance(event, NotebookStopped) and event.saved == ["a.ipynb"] and event.notebook_id == "nb-1"


def _notebook() -> NotebookRequested:
    return NotebookRequested(tenant="legal", notebook_id="nb-1", idle_timeout_s=600, max_runtime_s=3600)
