"""How fresh the ledger is: seconds from each booked event's ``occurred_at`` to the commit of
its lines (the ledger-freshness SLO in policies/slos.yaml), labelled by the event's subject."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from uuid import UUID

from prometheus_client import CollectorRegistry, Histogram

from contracts import Envelope
from services.cost_ledger.domain import BOOKED

BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


class LedgerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram("aicloud_ledger_lag_seconds", "From an event's occurred_at to the "
                             "commit of its ledger lines.", ["subject"], buckets=BUCKETS,
                             registry=registry)
        for booked in BOOKED:  # a quiet subject reads 0, not absent
            self.lag.labels(subject=booked.SUBJECT)

    def observe_lag(self, events: Sequence[Envelope], *, booked: Collection[UUID],
                    committed_at: datetime) -> None:
        """Once per event in ``booked``: a redelivered event booked nothing and is not in it, and
        a copy in the same batch is observed once. Clock skew never makes a lag negative."""
        pending = set(booked)
        for event in events:
            if event.event_id in pending:
                pending.discard(event.event_id)
                self.lag.labels(subject=event.SUBJECT).observe(
                    max((committed_at - event.occurred_at).total_seconds(), 0.0))
