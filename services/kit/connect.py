"""Connecting to NATS as one bus identity.

The client retries forever while no server answers (a service may start before the bus), but
a server that refuses the identity's user or password answers the same on every try: that
ends the connect at once, so the service stops naming its credentials instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient

from contracts.wire import inbox_prefix

AUTHORIZATION_VIOLATION = "authorization violation"


class BusRefused(ConnectionRefusedError):
    """The NATS server refused the user or password."""


def servers(url: str) -> list[str]:
    """A URL, or a cluster's URLs comma-separated: the client tries each and learns the rest."""
    return [part.strip() for part in url.split(",") if part.strip()]


ErrorCallback = Callable[[Exception], Awaitable[None]]


async def dial(url: str, *, identity: str, user: str | None, password: str | None,
               on_error: ErrorCallback) -> NatsClient:
    """A connected client for ``identity`` (its name, its own inbox branch), reconnecting for
    ever once connected; ``on_error`` hears every error the server reports (a permissions
    violation only reaches the client there). Raises ``BusRefused`` when the server refuses
    the login."""
    refused = asyncio.Event()
    nc = NatsClient()
    connecting = asyncio.create_task(nc.connect(
        servers(url), name=identity, max_reconnect_attempts=-1, connect_timeout=5,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # typed int; any number of seconds works
        # replies and pulled messages arrive under the identity's own inbox branch, the only
        # one its permissions let it subscribe to
        inbox_prefix=inbox_prefix(identity), error_cb=_watch(on_error, refused, nc),
        user=user, password=password))
    watching = asyncio.create_task(refused.wait())
    await asyncio.wait({connecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    watching.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        await nc.close()
        raise BusRefused(f"NATS refused user {user!r} for {identity} (Authorization Violation): "
                         "wrong user or password")
    connecting.result()
    return nc


def _watch(on_error: ErrorCallback, refused: asyncio.Event, nc: NatsClient) -> ErrorCallback:
    async def report(error: Exception) -> None:
        await on_error(error)
        if AUTHORIZATION_VIOLATION in str(error).lower() and not nc.is_connected:
            refused.set()
    return report
