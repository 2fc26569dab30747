"""Watchers: tell long-lived workflows what happens in their sandboxes.

Endpoints: each replica's model server counts requests; when an endpoint's count moves or its
requests in flight change, its workflow gets an ``activity`` signal (at most one per second
per endpoint, with a trailing one so the last burst is never lost; the report carries the time
it was seen, so debouncing never moves the idle deadline). A replica that died is reported
with ``replicas_lost``.

Notebooks: Jupyter's own record (``last_activity``, kernels busy) is read the same way and
signalled to the notebook's workflow when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from services.provisioner.endpoint_activities import Fleet

log = structlog.get_logger(__name__)
POLL_S = 0.5
DEBOUNCE_S = 1.0

Signal = Callable[[str, str, Any], Awaitable[None]]
"""(workflow id, signal name, argument)"""


@dataclass
class _Seen:
    requests: int = -1
    in_flight: int = 0
    changed_at: float = 0.0
    pending: bool = False
    signalled_at: float = 0.0


class _Watcher:
    """Polls every POLL_S until stopped; a failed poll is logged and the next one runs."""

    NAME = "watcher"

    def __init__(self, signal: Signal) -> None:
        self._signal = signal
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.NAME)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def poll(self) -> None:
        raise NotImplementedError

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # a watcher must outlive any one bad poll
                log.exception("watch_failed", watcher=self.NAME)
            await asyncio.sleep(POLL_S)


class EndpointWatcher(_Watcher):
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


class NotebookWatcher(_Watcher):
    """Jupyter's activity -> ``activity`` signals, only when it changed."""

    NAME = "notebook-watcher"

    def __init__(self, notebooks: dict[str, Any], signal: Signal) -> None:
        super().__init__(signal)
        self._notebooks = notebooks
        self._seen: dict[str, tuple[float, bool]] = {}

    async def poll(self) -> None:
        for notebook_id, notebook in list(self._notebooks.items()):
            try:
                status = await notebook.status()
            except Exception:  # not answering: the workflow's cap and idle timers still run
                continue
            seen = (status.last_activity.timestamp(), status.busy)
            if self._seen.get(notebook_id) != seen:
                self._seen[notebook_id] = seen
                await self._signal(notebook_id, "activity", {"at_s": seen[0], "busy": seen[1]})
        for gone in set(self._seen) - set(self._notebooks):
            del self._seen[gone]
