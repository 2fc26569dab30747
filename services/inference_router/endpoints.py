"""The platform's own endpoints as the router sees them: ready versions (weights, replicas) or
dormant (scaled to zero), owned by one team, of one kind, with a per-team quota.

State changes come from the ``endpoints.*`` events (handlers.py) and from the router's tables
at start (app.py). Each change rebuilds the endpoint's ``Route`` and its versions' providers
once, so a request does dictionary lookups only. A dormant endpoint keeps its route (team and
kind still decide who may call it and where) but has no target; requests for it are held
(wake.py) until a version is ready again, which sets its ``woken`` event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from contracts import EndpointReady
from contracts.endpoints import ServingKind
from services.inference_router.config import Route, Target
from services.inference_router.replicas import ReplicaSet, Sessions

SCALED_TO_ZERO = "scaled_to_zero"


@dataclass(frozen=True)
class Serving:
    """What ``endpoints.ready`` says about one version: enough to route to it and restore it."""

    team: str
    version: str
    url: str
    replicas: tuple[str, ...] = ()
    weight: int = 100
    kind: ServingKind = "chat"
    rpm_limit: int | None = None
    tpm_limit: int | None = None

    @classmethod
    def of(cls, event: EndpointReady) -> Serving:
        return cls(event.tenant, event.version, event.url, tuple(event.replicas), event.weight,
                   event.kind, event.rpm_limit, event.tpm_limit)

    @property
    def urls(self) -> tuple[str, ...]:
        return self.replicas or (self.url,)


@dataclass(frozen=True)
class Dormant:
    """What the router keeps of an endpoint while no replica of it runs."""

    team: str
    kind: ServingKind = "chat"
    rpm_limit: int | None = None
    tpm_limit: int | None = None


@dataclass(eq=False)
class Endpoint:
    team: str
    kind: ServingKind = "chat"
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    versions: dict[str, Serving] = field(default_factory=dict)
    route: Route | None = None
    in_flight: int = 0  # admitted requests not finished yet, held ones included
    removed: bool = False
    woken: asyncio.Event | None = None  # set when a version is ready (or the endpoint is gone)
    asked_at: float | None = None  # monotonic time the last WakeEndpoint was published

    @property
    def dormant(self) -> bool:
        return not self.versions

    def wake_held(self) -> None:
        if self.woken is not None:
            self.woken.set()
        self.woken, self.asked_at = None, None


def provider_name(endpoint: str, version: str) -> str:
    return f"platform/{endpoint}/{version}"


@dataclass
class EndpointTable:
    sessions: Sessions | None = None
    timeout_s: float = 60.0
    _endpoints: dict[str, Endpoint] = field(default_factory=dict)
    _providers: dict[str, ReplicaSet] = field(default_factory=dict)

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def routes(self) -> dict[str, Route]:
        return {name: e.route for name, e in self._endpoints.items() if e.route is not None}

    def provider(self, name: str) -> ReplicaSet | None:
        return self._providers.get(name)

    def in_flight(self, name: str) -> int:
        """Requests for ``name`` admitted and not finished (held ones too): demand, for scaling."""
        endpoint = self._endpoints.get(name)
        return endpoint.in_flight if endpoint is not None else 0

    def demand(self) -> dict[str, int]:
        """``in_flight`` of every endpoint the router knows, dormant ones included."""
        return {name: e.in_flight for name, e in self._endpoints.items() if not e.removed}

    async def ready(self, name: str, serving: Serving) -> None:
        """A version serves (new, or new weight/replicas/limits): route to it, release held calls."""
        assert self.sessions is not None, "set the sessions before routing to endpoints"
        endpoint = self._endpoints.setdefault(name, Endpoint(serving.team))
        endpoint.team, endpoint.kind = serving.team, serving.kind
        endpoint.rpm_limit, endpoint.tpm_limit = serving.rpm_limit, serving.tpm_limit
        endpoint.versions[serving.version] = serving
        self._providers[provider_name(name, serving.version)] = ReplicaSet(
            provider_name(name, serving.version), serving.urls, sessions=self.sessions,
            timeout_s=self.timeout_s)
        self._rebuild(name, endpoint)
        endpoint.wake_held()
        await self._close_unused()

    async def retired(self, name: str, *, version: str, reason: str) -> None:
        """The version gets no more traffic. Its endpoint stays, dormant, when it was the last
        version and it went because of scale-to-zero; otherwise the last version takes it along."""
        endpoint = self._endpoints.get(name)
        if endpoint is None or endpoint.versions.pop(version, None) is None:
            return
        self._providers.pop(provider_name(name, version), None)
        if endpoint.dormant and reason != SCALED_TO_ZERO:
            self._forget(name)
        else:
            self._rebuild(name, endpoint)
        await self._close_unused()

    async def scaled_to_zero(self, name: str, *, team: str, kind: ServingKind) -> Endpoint:
        """No replica runs: keep the endpoint, dormant, so its next request wakes it."""
        endpoint = self._endpoints.setdefault(name, Endpoint(team))
        endpoint.team, endpoint.kind = team, kind
        for version in endpoint.versions:
            self._providers.pop(provider_name(name, version), None)
        endpoint.versions.clear()
        self._rebuild(name, endpoint)
        await self._close_unused()
        return endpoint

    async def restore(self, name: str, serving: Serving | None, known: Dormant) -> None:
        """Put back what the router's tables hold (at start): a ready version, or a dormant endpoint."""
        if serving is not None:
            await self.ready(name, serving)
            return
        endpoint = await self.scaled_to_zero(name, team=known.team, kind=known.kind)
        endpoint.rpm_limit, endpoint.tpm_limit = known.rpm_limit, known.tpm_limit

    async def deleted(self, name: str) -> None:
        self._forget(name)
        await self._close_unused()

    async def close(self) -> None:
        if self.sessions is not None:
            await self.sessions.close()

    def _forget(self, name: str) -> None:
        endpoint = self._endpoints.pop(name, None)
        if endpoint is None:
            return
        for version in endpoint.versions:
            self._providers.pop(provider_name(name, version), None)
        endpoint.versions.clear()
        endpoint.removed = True
        endpoint.wake_held()  # held requests learn it is gone instead of waiting out the timeout

    def _rebuild(self, name: str, endpoint: Endpoint) -> None:
        kind, teams = endpoint.kind, (endpoint.team,)
        if endpoint.dormant:
            # No target to validate: a dormant route is read only for its team and kind.
            endpoint.route = Route.model_construct(
                kind=kind, teams=teams, pii="allow", targets=(), retries=0,
                description="scaled to zero: the next request wakes it")
            return
        sets = {v: self._providers[provider_name(name, v)] for v in endpoint.versions}
        endpoint.route = Route(
            kind=kind, teams=teams, pii="allow", backoff_s=0,
            targets=tuple(Target(provider=sets[v].name, model=name, version=v, weight=s.weight)
                          for v, s in sorted(endpoint.versions.items())),
            # another replica of the same version is the natural retry for a failed one
            retries=min(min(r.size for r in sets.values()) - 1, 2))

    async def _close_unused(self) -> None:
        if self.sessions is not None:
            await self.sessions.keep_only(url for e in self._endpoints.values()
                                          for s in e.versions.values() for url in s.urls)
