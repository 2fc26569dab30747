"""The platform's language: every message that crosses a service boundary."""

from contracts.agents import (
    AgentRunFinished,
    AgentRunStarted,
    CreateSandbox,
    SandboxCommandFinished,
    SandboxCreated,
    SandboxDeleted,
    SandboxEgress,
    ToolCalled,
)
from contracts.alerts import AlertFired
from contracts.budgets import BudgetChanged, BudgetExhausted, BudgetThresholdCrossed
from contracts.dlq import DeadLetter
from contracts.endpoints import (
    EndpointAdmitted,
    EndpointReady,
    EndpointRejected,
    EndpointRequested,
    EndpointRetired,
)
from contracts.envelope import Command, Envelope, Event, dead_letter_subject, subject
from contracts.inference import InferenceCompleted
from contracts.jobs import (
    CancelJob,
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobQueued,
    JobRejected,
    JobRequested,
    JobStarted,
    JobTerminated,
)
from contracts.notebooks import (
    NotebookAdmitted,
    NotebookRejected,
    NotebookRequested,
    NotebookStopped,
)
from contracts.usage import UsageRecorded

MESSAGES: tuple[type[Envelope], ...] = (
    JobRequested,
    JobAdmitted,
    JobRejected,
    JobQueued,
    JobStarted,
    JobCompleted,
    JobFailed,
    JobTerminated,
    CancelJob,
    EndpointRequested,
    EndpointAdmitted,
    EndpointRejected,
    EndpointReady,
    EndpointRetired,
    NotebookRequested,
    NotebookAdmitted,
    NotebookRejected,
    NotebookStopped,
    UsageRecorded,
    BudgetThresholdCrossed,
    BudgetExhausted,
    BudgetChanged,
    InferenceCompleted,
    CreateSandbox,
    SandboxCreated,
    SandboxDeleted,
    SandboxCommandFinished,
    SandboxEgress,
    ToolCalled,
    AgentRunStarted,
    AgentRunFinished,
    AlertFired,
)
"""Every message type, in catalogue order."""

BY_SUBJECT: dict[str, type[Envelope]] = {m.SUBJECT: m for m in MESSAGES}

DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(m.SUBJECT.split(".")[1] for m in MESSAGES))
"""One JetStream stream per domain."""

__all__ = [
    "BY_SUBJECT",
    "DOMAINS",
    "MESSAGES",
    "AgentRunFinished",
    "AgentRunStarted",
    "AlertFired",
    "BudgetChanged",
    "BudgetExhausted",
    "BudgetThresholdCrossed",
    "CancelJob",
    "Command",
    "CreateSandbox",
    "DeadLetter",
    "EndpointAdmitted",
    "EndpointReady",
    "EndpointRejected",
    "EndpointRequested",
    "EndpointRetired",
    "Envelope",
    "Event",
    "InferenceCompleted",
    "JobAdmitted",
    "JobCompleted",
    "JobFailed",
    "JobQueued",
    "JobRejected",
    "JobRequested",
    "JobStarted",
    "JobTerminated",
    "NotebookAdmitted",
    "NotebookRejected",
    "NotebookRequested",
    "NotebookStopped",
    "SandboxCommandFinished",
    "SandboxCreated",
    "SandboxDeleted",
    "SandboxEgress",
    "ToolCalled",
    "UsageRecorded",
    "dead_letter_subject",
    "subject",
]
