"""Job, endpoint and notebook states and the transitions events cause. Pure rules, unit-tested
directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from contracts import (
    EndpointAdmitted,
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointFailed,
    EndpointReady,
    EndpointRejected,
    EndpointRetired,
    EndpointScaledToZero,
    EndpointScanned,
    NotebookAdmitted,
    NotebookRejected,
    NotebookStarted,
    NotebookStopped,
)

TERMINAL: Final = frozenset({"completed", "failed", "terminated", "rejected"})

_ORDER: Final = {
    "requested": 0, "queued": 1, "admitted": 2, "rejected": 2, "provisioning": 3, "running": 4,
    "completed": 5, "failed": 5, "terminated": 5,
}


def next_status(current: str, incoming: str) -> str:
    """Events can arrive out of order: a state never moves backwards, and terminal is final."""
    if current in TERMINAL:
        return current
    return incoming if _ORDER[incoming] >= _ORDER[current] else current


# -- endpoints and notebooks ----------------------------------------------------------------
LIVE: Final = frozenset({"requested", "provisioning", "scanning", "ready", "canary", "scaled_to_zero"})
SCAN_FIELDS: Final = frozenset({"version", "allowed", "format", "size_bytes", "license", "findings",
                                "reason"})


@dataclass(frozen=True)
class Change:
    """What one event does to an endpoint's or notebook's row: a line of its history
    (``what`` happened and a readable ``note``) and the columns it sets."""

    what: str
    note: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Versions:
    """What an endpoint serves now: its version and, during a canary, the canary's."""

    version: str | None
    canary_version: str | None


EndpointEvent = (
    EndpointAdmitted | EndpointRejected | EndpointScanned | EndpointReady | EndpointScaledToZero
    | EndpointRetired | EndpointCanaryDecided | EndpointFailed | EndpointDeleted
)
NotebookEvent = NotebookAdmitted | NotebookRejected | NotebookStarted | NotebookStopped


def endpoint_change(event: EndpointEvent, current: Versions) -> Change | None:
    """The workflow, the scanner and the canary judge publish on separate subjects, so their
    events arrive in any order: an endpoint that already serves a version keeps its status when
    a late ``rejected`` or ``scanned`` arrives, and a ``ready`` for another version is a canary
    unless it takes all the traffic. None for an event that changes nothing shown."""
    rule = _ENDPOINT_RULES.get(type(event))
    return None if rule is None else rule(event, current)


def notebook_change(event: NotebookEvent) -> Change | None:
    """A notebook has one workflow, so its events arrive in order and each sets the status."""
    match event:
        case NotebookAdmitted():
            return Change("admitted", event.reason, {"status": "starting"})
        case NotebookRejected():
            return Change("rejected", event.reason, {"status": "rejected", "reason": event.reason})
        case NotebookStarted():
            return Change("running", f"idle shutdown after {event.idle_timeout_s} s",
                          {"status": "running", "url": event.url, "stops_at": event.stops_at})
        case NotebookStopped():
            saved = f"; saved {', '.join(event.saved)}" if event.saved else ""
            return Change("stopped", event.reason + saved,
                          {"status": "stopped", "reason": event.reason, "saved": event.saved})
    return None


def resolve_version(wanted: str, *, latest: int, aliases: dict[str, int]) -> int | None:
    """``latest``, an alias (``production`` or ``@production``) or a version number."""
    wanted = wanted.lstrip("@")
    number = latest if wanted == "latest" else aliases.get(wanted)
    if number is None and wanted.isdigit():
        number = int(wanted)
    return number


def _admitted(event: EndpointAdmitted, current: Versions) -> Change:
    return Change("admitted", event.reason)


def _rejected(event: EndpointRejected, current: Versions) -> Change:
    status = {} if current.version else {"status": "rejected"}
    return Change("rejected", event.reason, {"reason": event.reason} | status)


def _scanned(event: EndpointScanned, current: Versions) -> Change:
    verdict = "allowed" if event.allowed else "refused"
    note = (f"{event.format}, {event.size_bytes:,} bytes, licence {event.license or 'unknown'}"
            + (f"; {event.reason}" if event.reason else ""))
    fields: dict[str, Any] = {"scan": event.model_dump(mode="json", include=set(SCAN_FIELDS))}
    if not current.version:
        fields["status"] = "provisioning" if event.allowed else "scanning"
    return Change(f"scan {verdict}", note, fields)


def _ready(event: EndpointReady, current: Versions) -> Change:
    note = f"version {event.version} at {event.weight}% on {len(event.replicas)} replica(s)"
    sole = current.version in (None, event.version) and not current.canary_version
    if event.weight == 100 or sole:
        return Change("ready", note, {"version": event.version, "kind": event.kind, "status": "ready",
                                      "canary_version": None, "canary_percent": 0})
    if event.version != current.version:
        return Change("ready", note, {"canary_version": event.version,
                                      "canary_percent": event.weight, "status": "canary"})
    return Change("ready", note)


def _scaled_to_zero(event: EndpointScaledToZero, current: Versions) -> Change:
    return Change("scaled to zero", f"idle for {event.idle_s:.1f} s", {"status": "scaled_to_zero"})


def _retired(event: EndpointRetired, current: Versions) -> Change:
    fields: dict[str, Any] = {}
    if current.canary_version == event.version:
        fields = {"canary_version": None, "canary_percent": 0, "status": "ready"}
    return Change("retired", f"version {event.version}: {event.reason}", fields)


def _canary_decided(event: EndpointCanaryDecided, current: Versions) -> Change:
    fields: dict[str, Any] = {"canary_version": None, "canary_percent": 0, "reason": event.reason}
    if event.outcome == "promoted":
        fields |= {"version": event.canary, "status": "ready"}
    return Change(f"canary {event.outcome.replace('_', ' ')}",
                  f"version {event.canary}: {event.reason}", fields)


def _failed(event: EndpointFailed, current: Versions) -> Change:
    gone = {"status": "failed"} if event.endpoint_gone else {}
    return Change("failed", f"version {event.version}: {event.reason}", {"reason": event.reason} | gone)


def _deleted(event: EndpointDeleted, current: Versions) -> Change:
    return Change("deleted", event.reason, {"status": "deleted", "canary_version": None,
                                            "canary_percent": 0})


_ENDPOINT_RULES: Final[dict[type[Any], Callable[[Any, Versions], Change]]] = {
    EndpointAdmitted: _admitted,
    EndpointRejected: _rejected,
    EndpointScanned: _scanned,
    EndpointReady: _ready,
    EndpointScaledToZero: _scaled_to_zero,
    EndpointRetired: _retired,
    EndpointCanaryDecided: _canary_decided,
    EndpointFailed: _failed,
    EndpointDeleted: _deleted,
}
ENDPOINT_EVENTS: Final = tuple(_ENDPOINT_RULES)
NOTEBOOK_EVENTS: Final = (NotebookAdmitted, NotebookRejected, NotebookStarted, NotebookStopped)
