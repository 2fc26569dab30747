"""From a message's bytes to its contract, or to the reason it can never be processed.

A message that cannot be decoded is not retried: no redelivery makes bad bytes good, so the
reader raises :class:`Invalid` with the dead letter's reason and error instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from contracts import BY_SUBJECT, DeadLetter, Envelope
from contracts.envelope import DLQ_PREFIX

# A decoder gets the subject (without the isolation prefix) and the parsed JSON payload.
Decoder = Callable[[str, Any], BaseModel]
# A reader gets the subject and the raw bytes; it returns the contract or raises Invalid.
Reader = Callable[[str, bytes], Any]


class UnknownSubject(ValueError):
    """A message arrived on a subject no contract describes."""


class Invalid(Exception):
    """A message that can never be processed, with the reason its dead letter gives."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


def typed_decoder(message_type: type[Envelope]) -> Decoder:
    def decode(_: str, payload: Any) -> Envelope:
        return message_type.model_validate(payload)

    return decode


def catalogue_decoder(subject: str, payload: Any) -> BaseModel:
    """Decode any message of the catalogue by its subject (for wildcard subscribers)."""
    if subject.startswith(DLQ_PREFIX + "."):
        return DeadLetter.model_validate(payload)
    message_type = BY_SUBJECT.get(subject)
    if message_type is None:
        raise UnknownSubject(f"no contract is registered for subject {subject!r}")
    return message_type.model_validate(payload)


def json_reader(decode: Decoder) -> Reader:
    """Parse the JSON, then let ``decode`` choose and validate the contract."""

    def read(subject: str, data: bytes) -> Any:
        try:
            payload = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Invalid("invalid_json", f"payload is not JSON: {exc}") from None
        try:
            return decode(subject, payload)
        except (ValidationError, UnknownSubject) as exc:
            raise Invalid("invalid_schema", describe_error(exc)) from None

    return read


def typed_reader(message_type: type[Envelope]) -> Reader:
    """The fast path when the contract is known: validate the bytes directly, with no
    intermediate dict (pydantic reports bad JSON as a ``json_invalid`` error)."""

    def read(_: str, data: bytes) -> Any:
        try:
            return message_type.model_validate_json(data)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                raise Invalid("invalid_json", f"payload is not JSON: {exc}") from None
            raise Invalid("invalid_schema", describe_error(exc)) from None

    return read


def describe_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(message)"
            parts.append(f"{where}: {err['msg']}")
        return f"{exc.title} failed validation: " + "; ".join(parts)
    return str(exc)
