"""One request through the router: who is calling, may they, can they afford it, where to, and
what it cost.

Admission (key, model access, budget, rate and token limits) happens before any upstream is
called; the PII guard runs before a prompt leaves for an external provider; retries and
fallbacks happen only while nothing has been sent to the caller; usage is recorded for every
outcome, including refusals.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from nats.errors import Error as NatsError

from contracts.pricebook import PriceBook
from services.inference_router import wire
from services.inference_router.endpoints import Endpoint
from services.inference_router.guard import Findings, guard_messages
from services.inference_router.keys import KeyCache, VirtualKey
from services.inference_router.limits import Limit, Limiter, LimiterBusy
from services.inference_router.providers import UpstreamError
from services.inference_router.requests import ApiError, Call
from services.inference_router.routing import RouteTable, Step
from services.inference_router.wake import Waker

RESERVE_OUT_DEFAULT = 256
PATH_OF = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings", "predict": "/v1/predict"}
Wanted = tuple[Limit, float, str, str]  # limit, amount, what (rpm/tpm/budget), whose (for errors)


@dataclass(frozen=True)
class Block:
    budget_id: str
    period: str
    action: str
    spent_usd: Decimal
    amount_usd: Decimal


@dataclass
class Budgets:
    """Teams whose budget is exhausted (from ``budgets.exhausted``), per period."""

    blocks: dict[str, Block] = field(default_factory=dict)

    def block(self, team: str, block: Block) -> None:
        self.blocks[team] = block

    def unblock(self, team: str) -> None:
        self.blocks.pop(team, None)

    def blocked(self, team: str) -> Block | None:
        block = self.blocks.get(team)
        if block is not None and block.period == datetime.now(UTC).strftime("%Y-%m"):
            return block
        return None


@dataclass
class Admission:
    """What one admitted call holds, to be settled when it ends."""

    key: VirtualKey
    limits: list[tuple[Limit, float, str]] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    parallel: bool = False
    endpoint: Endpoint | None = None  # a platform endpoint's in-flight count this call holds


@dataclass
class Gateway:
    routes: RouteTable
    keys: KeyCache
    limiter: Limiter
    budgets: Budgets
    prices: PriceBook
    waker: Waker | None = None
    queue_timeout_s: float = 2.0
    max_waiters: int = 256
    _parallel: dict[str, int] = field(default_factory=dict)
    _waiting: dict[str, int] = field(default_factory=dict)

    # -- who, and may they ------------------------------------------------------------
    async def authenticate(self, authorization: str | None, api_key: str | None) -> VirtualKey:
        token = api_key or ""
        if authorization and authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
        # Unknown, revoked and malformed keys get the same answer: it reveals nothing.
        key = await self.keys.find(token) if token.startswith("vk_") and len(token) <= 128 else None
        if key is None:
            raise ApiError(401, "invalid API key: send a router key (vk_...) as "
                           "'Authorization: Bearer <key>'", type_="authentication_error",
                           code="invalid_api_key")
        return key

    def visible_models(self, key: VirtualKey) -> dict[str, Any]:
        return {alias: route for alias, route in sorted(self.routes.routes().items())
                if route.open_to(key.team) and key.may_use(alias)}

    async def admit(self, call: Call, key: VirtualKey) -> Admission:
        route = self.routes.route(call.alias)
        if route is None or not route.open_to(key.team):
            raise ApiError(404, f"the model '{call.alias}' does not exist or team {key.team} may "
                           "not use it; GET /v1/models lists yours", code="model_not_found",
                           param="model")
        if route.kind != call.operation:
            raise ApiError(400, f"'{call.alias}' is a {route.kind} model, it does not serve "
                           f"{PATH_OF[call.operation]}; call {PATH_OF[route.kind]}",
                           param="model", code="wrong_operation")
        if not key.may_use(call.alias):
            raise ApiError(403, f"key {key.key_id} may not use '{call.alias}'; it may use: "
                           f"{', '.join(key.spec.models)}", type_="permission_error",
                           code="model_not_allowed", param="model")
        self._check_budget(key)
        return await self._take_limits(call, key)

    def _check_budget(self, key: VirtualKey) -> None:
        block = self.budgets.blocked(key.team)
        if block is not None:
            raise ApiError(402, f"team {key.team}'s budget '{block.budget_id}' for {block.period} "
                           f"is exhausted (${block.spent_usd:.2f} of ${block.amount_usd:.2f}); "
                           "ask your platform team to raise it", type_="insufficient_quota",
                           code="budget_exhausted")

    async def hold(self, call: Call) -> None:
        """Wait while a scaled-to-zero endpoint starts; returns at once for anything else."""
        endpoint = self.routes.endpoints.get(call.alias)
        if endpoint is not None and endpoint.dormant and self.waker is not None:
            await self.waker.until_ready(call.alias, endpoint)

    async def _take_limits(self, call: Call, key: VirtualKey) -> Admission:
        spec, admission = key.spec, Admission(key)
        if spec.max_parallel is not None and self._parallel.get(key.key_id, 0) >= spec.max_parallel:
            raise ApiError(429, f"key {key.key_id} already has {spec.max_parallel} requests in "
                           "flight, its limit; wait for one to finish", type_="rate_limit_exceeded",
                           code="too_many_parallel", headers={"retry-after": "1"})
        endpoint = self.routes.endpoints.get(call.alias)
        try:
            for limit, amount, what, whose in self._wanted(call, key, endpoint):
                await self._wait_for(limit, amount, what, whose, key)
                admission.limits.append((limit, amount, what))
        except (LimiterBusy, NatsError, TimeoutError) as exc:
            self.release(admission, used=None)
            raise ApiError(503, f"the router cannot check key {key.key_id}'s limits right now "
                           f"({type(exc).__name__}); retry in a second", type_="api_error",
                           code="limits_unavailable", headers={"retry-after": "1"}) from None
        except BaseException:
            self.release(admission, used=None)
            raise
        self._parallel[key.key_id] = self._parallel.get(key.key_id, 0) + 1
        admission.parallel = True
        if endpoint is not None:
            endpoint.in_flight += 1
            admission.endpoint = endpoint
        return admission

    def _wanted(self, call: Call, key: VirtualKey, endpoint: Endpoint | None) -> list[Wanted]:
        """The key's limits, then the endpoint's quota for the key's team (shared by its keys)."""
        spec, wanted = key.spec, []
        if spec.budget_usd is not None:
            period = datetime.now(UTC).strftime("%Y-%m")
            wanted.append((Limit(f"{key.key_id}.usd.{period.replace('-', '')}",
                                 float(spec.budget_usd), 0.0), 1e-6, "budget", f"key {key.key_id}"))
        per_minute = [(f"{key.key_id}", spec.rpm, spec.tpm, f"key {key.key_id}")]
        if endpoint is not None:
            per_minute.append((f"endpoint.{call.alias}.{key.team}", endpoint.rpm_limit,
                               endpoint.tpm_limit, f"team {key.team} on endpoint '{call.alias}'"))
        reserve: int | None = None
        for name, rpm, tpm, whose in per_minute:
            if rpm is not None:
                wanted.append((Limit.per_minute(f"{name}.rpm", rpm), 1.0, "rpm", whose))
            if tpm is not None:
                if reserve is None:
                    reserve = len(call.prompt_text()) // 4 + (call.max_tokens or RESERVE_OUT_DEFAULT)
                wanted.append((Limit.per_minute(f"{name}.tpm", tpm), float(min(reserve, tpm)), "tpm",
                               whose))
        return wanted

    async def _wait_for(self, limit: Limit, amount: float, what: str, whose: str,
                        key: VirtualKey) -> None:
        deadline = time.monotonic() + self.queue_timeout_s
        waiting = False
        try:
            while True:
                wait_s = await self.limiter.try_take(limit, amount)
                if wait_s == 0:
                    return
                if what == "budget":
                    raise ApiError(402, f"key {key.key_id}'s budget of ${key.spec.budget_usd} for "
                                   "this month is used up; ask your platform team for more",
                                   type_="insufficient_quota", code="key_budget_exhausted")
                if time.monotonic() + wait_s > deadline or (
                        not waiting and self._waiting.get(limit.name, 0) >= self.max_waiters):
                    raise ApiError(429, f"{whose} is over its {what.upper()} limit "
                                   f"({limit.capacity:g}/min); retry after "
                                   f"{math.ceil(wait_s)} s", type_="rate_limit_exceeded",
                                   code=f"{what}_limit", headers={"retry-after": str(math.ceil(wait_s))})
                if not waiting:
                    waiting = True
                    self._waiting[limit.name] = self._waiting.get(limit.name, 0) + 1
                await asyncio.sleep(min(wait_s, max(0.0, deadline - time.monotonic())))
        finally:
            if waiting:
                self._waiting[limit.name] -= 1

    def release(self, admission: Admission, *, used: dict[str, float] | None) -> None:
        """Settle reservations against what was ``used`` (by kind); ``None``: nothing was."""
        for limit, amount, what in admission.limits:
            if used is None:
                self.limiter.refund(limit, amount)
            elif what in used:
                self.limiter.settle(limit, used[what] - amount)
        admission.limits.clear()
        if admission.parallel:
            admission.parallel = False
            self._parallel[admission.key.key_id] -= 1
        if admission.endpoint is not None:
            admission.endpoint.in_flight -= 1
            admission.endpoint = None

    # -- what leaves for the provider ---------------------------------------------------
    def outbound(self, call: Call, step: Step, admission: Admission) -> dict[str, Any]:
        """The body as ``step``'s provider wants it, guarded when the provider is external."""
        body = call.body
        if step.provider.external and step.route.pii != "allow":
            body = orjson.loads(orjson.dumps(body))
            admission.findings = guard_messages(body, redact=step.route.pii == "redact")
            if admission.findings and step.route.pii == "block":
                raise ApiError(400, f"the prompt contains {admission.findings.summary()}; model "
                               f"'{call.alias}' does not send personal data to an external "
                               "provider (policy: block). Remove it and try again.",
                               code="pii_blocked")
        if call.operation == "predict" or (call.operation == "embeddings"
                                           and body.get("model") == step.target.model):
            return body  # as the caller sent it: nothing to rename or translate
        if call.operation == "embeddings":
            return {**body, "model": step.target.model}
        if step.provider.format == call.client:
            out = {**body, "model": step.target.model}
            if call.stream and call.client == "openai":
                out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            return out
        if step.provider.format == "anthropic":
            return wire.openai_to_anthropic(body, step.target.model)
        return wire.anthropic_to_openai(body, step.target.model)

    def cost(self, model: str, *, platform: bool, usage: wire.Usage) -> tuple[Decimal, bool]:
        if platform:
            return Decimal(0), False  # internal endpoints are billed by replica-seconds
        charge = self.prices.token_charge(model, tokens_in=usage.tokens_in,
                                          tokens_out=usage.tokens_out,
                                          tokens_cached=usage.tokens_cached,
                                          when=datetime.now(UTC))
        return charge.usd, charge.flagged


def upstream_failure(alias: str, error: UpstreamError | None) -> ApiError:
    if error is None:
        return ApiError(503, f"no target of '{alias}' is available (all circuits open); "
                        "retry shortly", type_="api_error", code="no_target_available",
                        headers={"retry-after": "5"})
    if error.status == 429:
        retry = str(math.ceil(error.retry_after or 1))
        return ApiError(429, f"every target of '{alias}' is rate limited upstream: {error.message}",
                        type_="rate_limit_exceeded", code="upstream_rate_limited",
                        headers={"retry-after": retry})
    if error.status in (400, 413, 422):
        return ApiError(400, f"the provider refused the request: {error.message}",
                        code="upstream_invalid_request")
    status = 504 if error.status in (408, 504) else 502
    return ApiError(status, f"every target of '{alias}' failed; last: {error.message}",
                    type_="api_error", code="upstream_error")
