"""Where a request goes: weighted targets with sticky assignment, fallbacks, circuit breakers.

The table is the routes file, overlaid by routes set through the admin API (kept in NATS KV so
every replica sees them) and by the platform's own endpoints (endpoints.py), which come and go
with the ``endpoints.*`` events.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from services.inference_router.config import Route, RouterConfig, Target
from services.inference_router.endpoints import EndpointTable
from services.inference_router.providers import HttpProvider, Provider


@dataclass
class Breaker:
    """Closed -> open after ``failures`` in a row -> one half-open probe after ``open_s``."""

    failures: int
    open_s: float
    _count: int = 0
    _open_until: float = 0.0
    _probing: bool = False

    def allow(self) -> bool:
        if self._count < self.failures:
            return True
        if time.monotonic() < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def record(self, ok: bool) -> None:
        self._probing = False
        if ok:
            self._count = 0
            return
        self._count += 1
        if self._count >= self.failures:
            self._open_until = time.monotonic() + self.open_s

    @property
    def state(self) -> str:
        if self._count < self.failures:
            return "closed"
        return "open" if time.monotonic() < self._open_until else "half-open"


@dataclass(frozen=True)
class Step:
    alias: str
    route: Route
    target: Target
    provider: Provider


@dataclass
class RouteTable:
    session: aiohttp.ClientSession | None = None
    config: RouterConfig = field(default_factory=RouterConfig)
    overrides: dict[str, Route] = field(default_factory=dict)
    endpoints: EndpointTable = field(default_factory=EndpointTable)
    _providers: dict[str, Provider] = field(default_factory=dict)
    _breakers: dict[str, Breaker] = field(default_factory=dict)

    def load(self, config: RouterConfig) -> None:
        assert self.session is not None, "set the HTTP session before loading routes"
        self.config = config
        self._providers = {name: HttpProvider(name, spec, self.session)
                           for name, spec in config.providers.items()}
        self._breakers.clear()

    def routes(self) -> dict[str, Route]:
        return {**self.config.models, **self.overrides, **self.endpoints.routes()}

    def route(self, alias: str) -> Route | None:
        endpoint = self.endpoints.get(alias)
        if endpoint is not None:
            return endpoint.route
        override = self.overrides.get(alias)
        return override if override is not None else self.config.models.get(alias)

    def provider(self, name: str) -> Provider | None:
        if name.startswith("platform/"):
            return self.endpoints.provider(name)
        return self._providers.get(name)

    def in_flight(self, endpoint: str) -> int:
        """Requests for a platform endpoint admitted and not yet finished, held ones included."""
        return self.endpoints.in_flight(endpoint)

    def circuits(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self._breakers.items()}

    def breaker(self, target: Target) -> Breaker:
        cb = self.config.circuit_breaker
        return self._breakers.setdefault(target.name, Breaker(cb.failures, cb.open_s))

    def plan(self, alias: str, *, sticky: str | None) -> Iterator[Step]:
        """The chosen target of ``alias``, then of each fallback, skipping open circuits."""
        seen = set()
        for name in (alias, *self._fallbacks(alias)):
            route = self.route(name)
            if route is None or name in seen or not route.targets:  # no targets: dormant
                continue
            seen.add(name)
            target = choose(route, f"{name}:{sticky}" if sticky else None)
            provider = self.provider(target.provider)
            if provider is not None:
                yield Step(name, route, target, provider)

    def _fallbacks(self, alias: str) -> tuple[str, ...]:
        route = self.route(alias)
        return route.fallbacks if route else ()


def choose(route: Route, sticky: str | None) -> Target:
    """Weighted choice; the same sticky key always lands on the same target."""
    total = sum(t.weight for t in route.targets)
    if sticky is None:
        point = random.random() * total
    else:
        digest = hashlib.blake2b(sticky.encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * total
    for target in route.targets:
        if point < target.weight:
            return target
        point -= target.weight
    return route.targets[-1]
