"""Contracts: subject naming, the envelope, and the exported documents staying in sync."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import BY_SUBJECT, MESSAGES, JobRequested, dead_letter_subject, subject
from contracts.envelope import SUBJECT_PATTERN
from contracts.export import drift, export, rendered_files

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_message_has_a_versioned_subject_and_documented_fields() -> None:
    assert len(BY_SUBJECT) == len(MESSAGES), "two messages share a subject"
    for message in MESSAGES:
        assert SUBJECT_PATTERN.match(message.SUBJECT), message.SUBJECT
        assert message.__doc__, f"{message.__name__} needs a docstring"
    domains = {m.SUBJECT.split(".")[1] for m in MESSAGES}
    assert {"jobs", "endpoints", "notebooks", "usage", "budgets", "inference", "sandboxes",
            "agents", "alerts"} <= domains


def test_subject_builder_refuses_bad_names() -> None:
    assert subject("jobs", "requested") == "aicloud.jobs.requested.v1"
    assert dead_letter_subject("aicloud.jobs.requested.v1") == "aicloud.dlq.aicloud.jobs.requested.v1"
    with pytest.raises(ValueError, match="lower_snake_case"):
        subject("Jobs", "requested")


def test_envelope_defaults_and_immutability() -> None:
    event = JobRequested(tenant="legal", job_id="j1", command=["true"])
    assert isinstance(event.event_id, uuid.UUID)
    assert event.occurred_at.tzinfo is not None
    assert event.schema_version == 1
    with pytest.raises(ValidationError):
        event.job_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [("tenant", "Legal Team"), ("job_id", "UPPER"), ("gpus", -1), ("command", []),
     ("job_type", "mining"), ("max_runtime_s", 0)],
)
def test_invalid_requests_are_refused_naming_the_field(field: str, value: object) -> None:
    payload: dict[str, object] = {"tenant": "legal", "job_id": "j1", "command": ["true"]}
    payload[field] = value
    with pytest.raises(ValidationError) as info:
        JobRequested.model_validate(payload)
    assert info.value.errors()[0]["loc"][0] == field


def test_additive_fields_from_newer_producers_are_tolerated() -> None:
    event = JobRequested.model_validate(
        {"tenant": "legal", "job_id": "j1", "command": ["x"], "field_from_the_future": 1}
    )
    assert event.job_id == "j1"


def test_checked_in_contract_docs_match_the_code() -> None:
    problems = drift(ROOT / "docs" / "contracts")
    assert problems == [], "run `aicloud contracts export docs/contracts` and commit: " + str(problems)


def test_export_writes_asyncapi_and_one_schema_per_event(tmp_path: Path) -> None:
    export(tmp_path)
    document = json.loads((tmp_path / "asyncapi.json").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in document["channels"].values()}
    assert {m.SUBJECT for m in MESSAGES} <= addresses
    for message in MESSAGES:
        schema = json.loads((tmp_path / "schemas" / f"{message.SUBJECT}.json").read_text())
        assert "tenant" in schema["required"]
    (tmp_path / "schemas" / "aicloud.old.gone.v1.json").write_text("{}")
    assert drift(tmp_path) == ["stale: schemas/aicloud.old.gone.v1.json"]
    (tmp_path / "asyncapi.json").write_text("{}")
    assert "changed: asyncapi.json" in drift(tmp_path)
    assert len(rendered_files()) == len(MESSAGES) + 3  # + asyncapi, dead letter, permissions
    identities = json.loads((tmp_path / "permissions.json").read_text())["identities"]
    assert identities["publisher"]["publish"]["allow"][0] == "aicloud.jobs.requested.v1"
