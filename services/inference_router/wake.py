"""Hold-and-wake: a request for a scaled-to-zero endpoint waits while the endpoint starts.

The first request that finds the endpoint dormant publishes one ``WakeEndpoint`` command;
every request arriving meanwhile waits on the same event, which ``EndpointTable.ready`` sets
when a version serves again, so all of them proceed together. A wake-up that brings no
``endpoints.ready`` within ``timeout_s`` counts as lost: the held requests get a 503 naming the
endpoint, and the next request asks again. A ready endpoint costs a dictionary lookup and one
attribute check; nothing here runs for it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import structlog

from contracts import WakeEndpoint
from services.inference_router.endpoints import Endpoint
from services.inference_router.requests import ApiError

log = structlog.get_logger(__name__)
Publish = Callable[[WakeEndpoint], Awaitable[None]]


class Waker:
    def __init__(self, publish: Publish, *, timeout_s: float, source: str = "inference-router") -> None:
        self._publish = publish
        self.timeout_s = timeout_s
        self._source = source

    async def until_ready(self, name: str, endpoint: Endpoint) -> None:
        """Return once ``endpoint`` has a ready version; wake it first if nobody asked yet."""
        deadline = time.monotonic() + self.timeout_s
        while endpoint.dormant and not endpoint.removed:
            if endpoint.woken is None:
                endpoint.woken = asyncio.Event()
            woken, now = endpoint.woken, time.monotonic()
            if endpoint.asked_at is None or now - endpoint.asked_at >= self.timeout_s:
                endpoint.asked_at = now
                await self._ask(name, endpoint)
            try:
                async with asyncio.timeout(max(0.0, deadline - now)):
                    await woken.wait()
            except TimeoutError:
                raise ApiError(503, f"endpoint '{name}' is starting (it was scaled to zero) and "
                               f"was not ready within {self.timeout_s:g} s; retry in a moment",
                               type_="api_error", code="endpoint_starting", headers={
                                   "retry-after": str(max(1, math.ceil(self.timeout_s / 4)))}) from None
        if endpoint.removed:
            raise ApiError(404, f"the model '{name}' was deleted while the request waited for it "
                           "to start", code="model_not_found", param="model")

    async def _ask(self, name: str, endpoint: Endpoint) -> None:
        command = WakeEndpoint(endpoint=name, tenant=endpoint.team, source=self._source)
        try:
            await self._publish(command)
        except Exception as exc:
            endpoint.asked_at = None  # let the next request try again
            log.warning("router.wake_failed", endpoint=name, error=str(exc))
            raise ApiError(503, f"endpoint '{name}' is scaled to zero and the router could not ask "
                           f"for it to start ({type(exc).__name__}); retry in a moment",
                           type_="api_error", code="endpoint_wake_failed",
                           headers={"retry-after": "1"}) from None
        log.info("router.endpoint_woken", endpoint=name, team=endpoint.team)
