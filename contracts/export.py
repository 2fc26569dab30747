"""Export the contracts as an AsyncAPI 3.0 document, one JSON Schema per message and the bus
identities' NATS permissions (``permissions.json``, generated from ``contracts.flows``).

The code is the source of truth; ``docs/contracts/`` holds the export and a test fails
when the two drift apart, so every contract change shows up as a visible diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts import MESSAGES, DeadLetter, Envelope
from contracts.envelope import DLQ_PREFIX
from contracts.flows import consumers, producers
from contracts.permissions import table

ASYNCAPI_FILE = "asyncapi.json"
PERMISSIONS_FILE = "permissions.json"
SCHEMA_DIR = "schemas"


def message_schema(message: type[Envelope]) -> dict[str, Any]:
    schema = message.model_json_schema(mode="serialization")
    schema["$id"] = f"{message.SUBJECT}.json"
    schema["x-subject"] = message.SUBJECT
    return schema


def _channel_id(subject: str) -> str:
    return subject.replace(".", "_")


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for message in MESSAGES:
        name = message.__name__
        messages[name] = {
            "name": name,
            "title": name,
            "summary": (message.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "Nats-Msg-Id": {"type": "string", "description": "= event_id (de-dup)"},
                    "traceparent": {"type": "string", "description": "W3C trace context"},
                },
            },
            "payload": {"$ref": f"{SCHEMA_DIR}/{message.SUBJECT}.json"},
        }
        channels[_channel_id(message.SUBJECT)] = {
            "address": message.SUBJECT,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-producers": list(producers(message)),
            "x-consumers": list(consumers(message)),
        }
    channels["aicloud_dlq"] = {
        "address": f"{DLQ_PREFIX}.{{subject}}",
        "parameters": {"subject": {"description": "The original subject."}},
        "messages": {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}},
    }
    messages["DeadLetter"] = {
        "name": "DeadLetter",
        "contentType": "application/json",
        "payload": {"$ref": f"{SCHEMA_DIR}/{DLQ_PREFIX}.json"},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "aicloud events",
            "version": "1.0.0",
            "description": "Every event and command exchanged by aicloud services over NATS JetStream.",
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": channels,
        "components": {"messages": messages},
    }


def permissions_document() -> dict[str, Any]:
    return {
        "description": "NATS permissions of each bus identity, generated from contracts/flows.py "
                       "(a user per service, publisher for outside systems, ops for operators). "
                       "A client of an identity uses its inbox_prefix. On a bus with an isolation "
                       "prefix, contracts.permissions.grant(identity, prefix=...) gives the same "
                       "with every subject, stream and bucket prefixed.",
        "identities": table(),
    }


def rendered_files() -> dict[str, str]:
    """Relative path -> file content, exactly as ``export`` writes them."""
    files = {ASYNCAPI_FILE: _dump(asyncapi_document()), PERMISSIONS_FILE: _dump(permissions_document())}
    for message in MESSAGES:
        files[f"{SCHEMA_DIR}/{message.SUBJECT}.json"] = _dump(message_schema(message))
    dlq = DeadLetter.model_json_schema()
    dlq["$id"] = f"{DLQ_PREFIX}.json"
    files[f"{SCHEMA_DIR}/{DLQ_PREFIX}.json"] = _dump(dlq)
    return files


def export(directory: Path) -> list[Path]:
    """Write every file under ``directory``, removing schemas of messages that no longer exist."""
    (directory / SCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    files = rendered_files()
    for stale in (directory / SCHEMA_DIR).glob("*.json"):
        if f"{SCHEMA_DIR}/{stale.name}" not in files:
            stale.unlink()
    written = []
    for relative, content in files.items():
        path = directory / relative
        path.write_text(content)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Files under ``directory`` that differ from the code's export (empty when in sync)."""
    files = rendered_files()
    present = {f"{SCHEMA_DIR}/{p.name}" for p in (directory / SCHEMA_DIR).glob("*.json")}
    problems = [f"stale: {name}" for name in sorted(present - files.keys())]
    for relative, content in files.items():
        path = directory / relative
        if not path.exists():
            problems.append(f"missing: {relative}")
        elif path.read_text() != content:
            problems.append(f"changed: {relative}")
    return problems


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
