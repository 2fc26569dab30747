"""Endpoints' traffic, told to their workflows.

Each replica's model server counts requests; when an endpoint's count moves or its requests
in flight change, its workflow gets an ``activity`` signal (at most one per second per
endpoint, with a trailing one so the last burst is never lost; the report carries the time it
was seen, so debouncing never moves the idle deadline). A replica that died is reported with
``replicas_lost``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from services.provisioner.endpoints.fleet import Fleet
from services.provisioner.watch import Signal, Watcher

log = structlog.get_logger(__name__)
DEBOUNCE_S = 1.0


@dataclass
class _Seen:
    requests: int = -1
    in_flight: int = 0
    changed_at: float = 0.0
    pending: bool = False
    signalled_at: float = 0.0


class EndpointWatcher(Watcher):
    NAME = "endpoint-watcher"

    def __init__(self, fleet: Fleet, signal: Signal) -> None:
        super().__init__(signal)
        self._fleet = fleet
        self._seen: dict[str, _Seen] = {}

    async def poll(self) -> None:
        now = time.time()
        lost: dict[str, list[str]] = {}
        totals: dict[str, tuple[int, int]] = {}
        for replica_id, (endpoint, replica) in list(self._fleet.replicas.items()):
            counters = await replica.counters() if replica.alive() else None
            if counters is None:
                if not replica.alive():
                    lost.setdefault(endpoint, []).append(replica_id)
                continue
            requests, in_flight = totals.get(endpoint, (0, 0))
            totals[endpoint] = (requests + counters["requests"], in_flight + counters["in_flight"])
        for endpoint, ids in lost.items():
            for replica_id in ids:
                self._fleet.replicas.pop(replica_id, None)
            log.warning("endpoint.replicas_lost", endpoint=endpoint, replicas=ids)
            await self._signal(endpoint, "replicas_lost", ids)
        for endpoint, (requests, in_flight) in totals.items():
            seen = self._seen.setdefault(endpoint, _Seen(requests=requests))
            if requests != seen.requests or in_flight != seen.in_flight:
                seen.requests, seen.in_flight, seen.changed_at, seen.pending = requests, in_flight, now, True
            if seen.pending and now - seen.signalled_at >= DEBOUNCE_S:
                seen.pending, seen.signalled_at = False, now
                await self._signal(endpoint, "activity", {"at_s": seen.changed_at, "in_flight": in_flight,
                                                          "requests": requests})
        for gone in set(self._seen) - set(totals):
            del self._seen[gone]
