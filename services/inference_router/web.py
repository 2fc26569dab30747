"""The router's HTTP face (aiohttp, for its low per-request overhead): the OpenAI- and
Anthropic-compatible API, the admin API and the ops endpoints every service has."""

from __future__ import annotations

import asyncio
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from opentelemetry.propagate import extract
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from services.inference_router import keys as keystore
from services.inference_router.config import ALIAS_PATTERN, Route
from services.inference_router.gateway import Gateway
from services.inference_router.openapi import spec as openapi_spec
from services.inference_router.quality import Sampler
from services.inference_router.requests import ApiError, Operation, parse_call
from services.inference_router.serve import execute
from services.inference_router.telemetry import (
    UNKNOWN_MODEL,
    EndpointDemand,
    Outcome,
    RouterMetrics,
    finish,
    start_span,
)
from services.inference_router.usage import UsageSink
from services.inference_router.wire import Format
from services.kit.db import Database
from services.kit.http import ReadinessCheck
from services.kit.metrics import Metrics

log = structlog.get_logger(__name__)
REQUEST_ID = web.RequestKey("request_id", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteStore = Callable[[str, Route | None], Awaitable[None]]


class RouterApi:
    def __init__(self, *, gateway: Gateway, sink: UsageSink, metrics: Metrics, db: Database,
                 checks: dict[str, ReadinessCheck], admin_token: str, max_body_bytes: int,
                 max_tokens_cap: int, store_route: RouteStore, sampler: Sampler) -> None:
        self.gw, self.sink, self.metrics, self.db, self.checks = gateway, sink, metrics, db, checks
        self.router_metrics = RouterMetrics(metrics.registry)
        metrics.registry.register(EndpointDemand(gateway.routes.endpoints.demand))
        self.admin_token, self.max_body, self.max_tokens_cap = admin_token, max_body_bytes, max_tokens_cap
        self.store_route, self.sampler = store_route, sampler

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body, middlewares=[self._errors])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/predict", self.predict)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/openapi.json", self.openapi)
        app.router.add_post("/admin/keys", self.create_key)
        app.router.add_get("/admin/keys", self.list_keys)
        app.router.add_delete("/admin/keys/{key_id}", self.revoke_key)
        app.router.add_get("/admin/routes", self.list_routes)
        app.router.add_put("/admin/routes/{alias}", self.put_route)
        app.router.add_delete("/admin/routes/{alias}", self.delete_route)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        return app

    # -- errors: always a JSON body in the caller's format, never a traceback -------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client: Format = "anthropic" if request.path == "/v1/messages" else "openai"
        try:
            return await handler(request)
        except ApiError as error:
            return _error_response(error, client, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {413: f"the request body is larger than {self.max_body} bytes; send less",
                       404: f"there is no {request.path}; see /openapi.json",
                       405: f"{request.method} is not allowed on {request.path}"}.get(
                exc.status, exc.reason)
            return _error_response(ApiError(exc.status, message, code=exc.reason.lower()
                                            .replace(" ", "_")), client, request)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            request_id = request.get(REQUEST_ID, "")
            log.exception("router.unexpected_error", path=request.path, request_id=request_id)
            return _error_response(ApiError(500, f"the router failed unexpectedly; quote request "
                                            f"id {request_id} to your platform team",
                                            type_="api_error", code="internal_error"), client, request)

    # -- the model API ---------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat", "openai")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "embeddings", "openai")

    async def predict(self, request: web.Request) -> web.StreamResponse:
        """A platform ``predict`` endpoint: ``{"model", "instances"}`` in, the replica's answer out."""
        return await self._serve(request, "predict", "openai")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat", "anthropic")

    async def _serve(self, request: web.Request, operation: Operation, client: Format) -> web.StreamResponse:
        request_id = request[REQUEST_ID] = request.headers.get("x-request-id") or uuid.uuid4().hex
        key = await self.gw.authenticate(request.headers.get("authorization"),
                                         request.headers.get("x-api-key"))
        call = parse_call(await request.read(), operation=operation, client=client,
                          request_id=request_id, headers=_lower(request.headers),
                          max_tokens_cap=self.max_tokens_cap)
        model = call.alias if self.gw.routes.route(call.alias) is not None else UNKNOWN_MODEL
        outcome = Outcome(call, key.team, key.key_id, start_span(call, extract(request.headers), model),
                          model=model)
        outcome.sampled = self.sampler.pick(call)
        admission = None
        try:
            admission = await self.gw.admit(call, key)
            await self.gw.hold(call)
            return await execute(self.gw, call, admission, outcome, request)
        except ApiError as error:
            outcome.status = "rejected" if error.status < 500 else "error"
            outcome.error = error.message
            raise
        except BaseException as exc:
            outcome.status = "cancelled" if isinstance(exc, asyncio.CancelledError | ConnectionError) \
                else "error"
            outcome.error = outcome.error or type(exc).__name__
            raise
        finally:
            if outcome.provider:
                outcome.cost, outcome.cost_flagged = self.gw.cost(
                    outcome.response_model, platform=outcome.target.startswith("platform/"),
                    usage=outcome.usage)
            if admission is not None:
                used = None if not outcome.provider else {
                    "tpm": float(outcome.usage.tokens_in + outcome.usage.tokens_out),
                    "budget": float(outcome.cost or 0)}
                self.gw.release(admission, used=used)
            finish(outcome, metrics=self.router_metrics, sink=self.sink)
            self.sampler.offer(outcome)

    async def models(self, request: web.Request) -> web.Response:
        key = await self.gw.authenticate(request.headers.get("authorization"),
                                         request.headers.get("x-api-key"))
        data = [{"id": alias, "object": "model", "created": 0, "owned_by": "aicloud",
                 "kind": route.kind, "description": route.description}
                for alias, route in self.gw.visible_models(key).items()]
        return _json({"object": "list", "data": data})

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_spec(models=sorted(self.gw.routes.routes())))

    # -- admin -----------------------------------------------------------------------------
    def _admin(self, request: web.Request) -> None:
        given = request.headers.get("authorization", "")[7:]
        if not self.admin_token or not secrets.compare_digest(given.encode(), self.admin_token.encode()):
            raise ApiError(401, "the admin API needs 'Authorization: Bearer <admin token>' "
                           "(AICLOUD_INFERENCE_ROUTER_ADMIN_TOKEN)", type_="authentication_error",
                           code="invalid_admin_token")

    async def create_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        spec = _validated(keystore.KeySpec, await request.read())
        key_id, key = keystore.new_key()
        async with self.db.transaction() as session:
            created = await keystore.store(session, key_id=key_id, key=key, spec=spec)
        log.info("router.key_created", key_id=key_id, team=spec.team)
        return _json({**created.public(), "key": key}, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        self._admin(request)
        async with self.db.transaction() as session:
            found = await keystore.list_keys(session, team=request.query.get("team"))
        return _json({"keys": [k.public() for k in found]})

    async def revoke_key(self, request: web.Request) -> web.Response:
        self._admin(request)
        async with self.db.transaction() as session:
            if not await keystore.revoke(session, key_id=request.match_info["key_id"]):
                raise ApiError(404, f"no active key {request.match_info['key_id']}", code="no_such_key")
        return _json({"revoked": request.match_info["key_id"]})

    async def list_routes(self, request: web.Request) -> web.Response:
        self._admin(request)
        routes = {alias: route.model_dump(mode="json") for alias, route in self.gw.routes.routes().items()}
        return _json({"models": routes, "circuits": self.gw.routes.circuits(),
                      "overrides": sorted(self.gw.routes.overrides)})

    async def put_route(self, request: web.Request) -> web.Response:
        self._admin(request)
        alias = request.match_info["alias"]
        if not re.fullmatch(ALIAS_PATTERN, alias):
            raise ApiError(400, f"route name {alias[:64]!r} is not a model alias: letters, digits and "
                           ". _ : / -, at most 128, starting with a letter or digit", code="invalid_route")
        route = _validated(Route, await request.read())
        unknown = [t.provider for t in route.targets if t.provider not in self.gw.routes.config.providers]
        missing = [f for f in route.fallbacks if f not in self.gw.routes.routes() and f != alias]
        if unknown or missing:
            raise ApiError(400, f"route {alias}: unknown providers {unknown or '-'}, unknown "
                           f"fallbacks {missing or '-'}", code="invalid_route")
        await self.store_route(alias, route)
        self.gw.routes.overrides[alias] = route
        return _json({"model": alias, "route": route.model_dump(mode="json")})

    async def delete_route(self, request: web.Request) -> web.Response:
        self._admin(request)
        alias = request.match_info["alias"]
        if alias not in self.gw.routes.overrides:
            raise ApiError(404, f"no admin route for {alias} (routes from the file are changed "
                           "in the file)", code="no_such_route")
        await self.store_route(alias, None)
        self.gw.routes.overrides.pop(alias, None)
        return _json({"deleted": alias})

    # -- ops --------------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "service": "inference-router"})

    async def readyz(self, request: web.Request) -> web.Response:
        results = {}
        for name, check in self.checks.items():
            try:
                await asyncio.wait_for(check(), 2.0)
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"failed: {exc}"
        ready = all(v == "ok" for v in results.values())
        return _json({"status": "ready" if ready else "not_ready", "checks": results},
                     status=200 if ready else 503)

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"content-type": CONTENT_TYPE_LATEST})


def _validated(model: Any, raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, f"invalid {model.__name__}: {fields}", code="invalid_body") from None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-")}


def _json(payload: Any, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


def _error_response(error: ApiError, client: Format, request: web.Request) -> web.Response:
    headers = {**error.headers, "x-request-id": request.get(REQUEST_ID)
               or request.headers.get("x-request-id") or uuid.uuid4().hex}
    return web.Response(body=error.body(client), status=error.status, headers=headers,
                        content_type="application/json")
