"""Who puts which message on the bus and who takes it off: the one declaration the NATS
permissions are generated from (``contracts.permissions``).

A unit test holds it to the code: each service's consumers are read from the service as
``app.build`` wires it, and what it publishes from the contracts its code constructs.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts import (
    DOMAINS,
    AgentRunFinished,
    AgentRunStarted,
    AlertFired,
    AlertResolved,
    BudgetChanged,
    BudgetExhausted,
    BudgetThresholdCrossed,
    CancelJob,
    ClusterCapacityChanged,
    CreateSandbox,
    DeleteEndpoint,
    EndpointAdmitted,
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointFailed,
    EndpointReady,
    EndpointRejected,
    EndpointRequested,
    EndpointRetired,
    EndpointScaledToZero,
    EndpointScanned,
    Envelope,
    ExtendNotebook,
    GpuSampled,
    InferenceCompleted,
    InferenceSampled,
    JobAdmitted,
    JobCompleted,
    JobFailed,
    JobProvisioning,
    JobQueued,
    JobRejected,
    JobRequested,
    JobStarted,
    JobTerminated,
    NotebookAdmitted,
    NotebookRejected,
    NotebookRequested,
    NotebookStarted,
    NotebookStopped,
    RollbackEndpoint,
    SandboxCommandFinished,
    SandboxCreated,
    SandboxDeleted,
    SandboxEgress,
    StopNotebook,
    ToolCalled,
    UsageRecorded,
    WakeEndpoint,
)
from contracts.envelope import DLQ_PREFIX
from contracts.wire import DLQ_DOMAIN, domain_of

CATALOG = "catalog"
QUOTA = "quota"
PROVISIONER = "provisioner"
COST_LEDGER = "cost-ledger"
INFERENCE_ROUTER = "inference-router"
AGENT_RUNTIME = "agent-runtime"
COLLECTOR = "observability-collector"
PUBLISHER = "publisher"
"""Systems outside the platform: they may only ask (the request subjects)."""


@dataclass(frozen=True)
class Flows:
    """What one identity puts on the bus and takes off it."""

    publishes: tuple[type[Envelope], ...] = ()
    consumes: tuple[type[Envelope], ...] = ()
    """Each through a durable consumer of its own, on the message's own subject."""
    observes: tuple[str, ...] = ()
    """Wildcard filters read whole (metrics: every domain, the dead letters)."""
    key_value: tuple[str, ...] = ()
    """Key-value buckets it owns (see ``contracts.wire.kv_bucket``)."""

    @property
    def filters(self) -> tuple[str, ...]:
        """Every filter subject it consumes from, one durable consumer each."""
        return (*(m.SUBJECT for m in self.consumes), *self.observes)


_JOB_LIFECYCLE = (JobAdmitted, JobRejected, JobQueued, JobProvisioning, JobStarted, JobCompleted,
                  JobFailed, JobTerminated)
_ENDPOINT_LIFECYCLE = (EndpointAdmitted, EndpointRejected, EndpointReady, EndpointRetired,
                       EndpointScanned, EndpointScaledToZero, EndpointCanaryDecided, EndpointFailed,
                       EndpointDeleted)

FLOWS: dict[str, Flows] = {
    CATALOG: Flows(
        publishes=(JobRequested, CancelJob, EndpointRequested, RollbackEndpoint, DeleteEndpoint,
                   NotebookRequested, StopNotebook, ExtendNotebook),
        consumes=(*_JOB_LIFECYCLE, *_ENDPOINT_LIFECYCLE, NotebookAdmitted, NotebookRejected,
                  NotebookStarted, NotebookStopped),
    ),
    QUOTA: Flows(
        publishes=(JobAdmitted, JobRejected, JobQueued, JobTerminated, EndpointAdmitted,
                   EndpointRejected, NotebookAdmitted, NotebookRejected),
        consumes=(JobRequested, JobCompleted, JobFailed, JobTerminated, CancelJob,
                  ClusterCapacityChanged, EndpointRequested, EndpointDeleted, EndpointFailed,
                  NotebookRequested, NotebookStopped, BudgetExhausted, BudgetChanged,
                  BudgetThresholdCrossed),
    ),
    PROVISIONER: Flows(
        publishes=(JobProvisioning, JobStarted, JobCompleted, JobFailed, JobTerminated,
                   EndpointReady, EndpointRetired, EndpointScanned, EndpointScaledToZero,
                   EndpointCanaryDecided, EndpointFailed, EndpointDeleted, NotebookStarted,
                   NotebookStopped, UsageRecorded, ClusterCapacityChanged, GpuSampled),
        consumes=(JobAdmitted, CancelJob, BudgetExhausted, EndpointAdmitted, WakeEndpoint,
                  RollbackEndpoint, DeleteEndpoint, NotebookAdmitted, StopNotebook, ExtendNotebook,
                  InferenceCompleted),
    ),
    COST_LEDGER: Flows(
        publishes=(BudgetThresholdCrossed, BudgetExhausted, BudgetChanged),
        consumes=(UsageRecorded, InferenceCompleted),
    ),
    INFERENCE_ROUTER: Flows(
        publishes=(InferenceCompleted, InferenceSampled, WakeEndpoint),
        consumes=(EndpointReady, EndpointRetired, EndpointScaledToZero, EndpointDeleted,
                  BudgetExhausted, BudgetChanged),
        key_value=("router_limits", "router_routes"),
    ),
    AGENT_RUNTIME: Flows(
        publishes=(SandboxCreated, SandboxDeleted, SandboxCommandFinished, SandboxEgress, ToolCalled,
                   AgentRunStarted, AgentRunFinished),
        consumes=(CreateSandbox,),
    ),
    COLLECTOR: Flows(
        publishes=(AlertFired, AlertResolved),
        observes=(*(f"aicloud.{domain}.>" for domain in DOMAINS), f"{DLQ_PREFIX}.>"),
    ),
    PUBLISHER: Flows(publishes=(JobRequested, EndpointRequested, NotebookRequested, CreateSandbox)),
}
"""Every identity on the bus but ``ops`` (the operators' tools, which may do anything)."""

SERVICES: tuple[str, ...] = tuple(name for name in FLOWS if name != PUBLISHER)


def producers(message: type[Envelope]) -> tuple[str, ...]:
    return tuple(name for name, flows in FLOWS.items() if message in flows.publishes)


def consumers(message: type[Envelope]) -> tuple[str, ...]:
    """Who reads ``message``: its durable consumers, then those observing its domain."""
    direct = tuple(name for name, flows in FLOWS.items() if message in flows.consumes)
    domain = domain_of(message.SUBJECT)
    return direct + tuple(name for name, flows in FLOWS.items()
                          if any(domain_of(f) == domain for f in flows.observes))


def stream_domains(identity: str) -> tuple[str, ...]:
    """The domains whose streams ``identity`` publishes into or consumes from; the dead-letter
    stream too when it consumes (a message it cannot process goes there)."""
    flows = FLOWS[identity]
    subjects = (*(m.SUBJECT for m in flows.publishes), *flows.filters)
    domains = dict.fromkeys(domain_of(s) for s in subjects)
    if flows.filters:
        domains[DLQ_DOMAIN] = None
    return tuple(domains)
