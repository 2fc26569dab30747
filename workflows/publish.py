"""The one thing a workflow hands the ``publish`` activity: a contract event it built itself.

Workflows decide what happened, so they build the event (its id from ``workflow.uuid4()``, its
time from ``workflow.now()``: the same on every replay, so a retried publish is de-duplicated
by JetStream). The activity only puts it on the bus.

Temporal's pydantic converter reads an activity's argument back by its declared type; a field
typed as the ``Envelope`` base class would lose every field of the concrete event. The
contract's subject travels beside the event and names the model it is read back as.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializeAsAny, model_validator

from contracts import MESSAGES, Envelope

BY_SUBJECT: dict[str, type[Envelope]] = {message.SUBJECT: message for message in MESSAGES}
TYPED_PUBLISH_PATCH = "typed-publish"
"""Workflows started before this patch hand string-kind facts to ``emit_*_event`` activities;
they keep calling those (with a ``Publish`` from here on), so their histories still replay."""


class Publish(BaseModel):
    subject: str
    event: SerializeAsAny[Envelope]

    @classmethod
    def of(cls, event: Envelope) -> Publish:
        return cls(subject=event.SUBJECT, event=event)

    @model_validator(mode="before")
    @classmethod
    def _read_as_its_contract(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("event"), dict):
            model = BY_SUBJECT.get(str(data.get("subject")))
            if model is None:
                raise ValueError(f"no contract travels on subject {data.get('subject')!r}")
            data = {**data, "event": model.model_validate(data["event"])}
        return data

    @model_validator(mode="after")
    def _subject_matches(self) -> Publish:
        if self.event.SUBJECT != self.subject:
            raise ValueError(f"{type(self.event).__name__} travels on {self.event.SUBJECT}, "
                             f"not {self.subject}")
        return self
