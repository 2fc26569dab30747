"""The HTTP face every service has: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import asyncpg
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.kit.metrics import Metrics

ReadinessCheck = Callable[[], Awaitable[None]]
PROBLEM = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["type", "title", "status", "detail", "instance"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object"}}}}
# Every 4xx these apps send is a problem document (the handlers below): the OpenAPI document says
# so for every operation, in place of FastAPI's default 422 body, which they never send.
ERRORS: dict[int | str, dict[str, Any]] = {"4XX": {
    "description": "What was wrong with the request (RFC 9457 problem details)",
    "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}, 503: {
    "description": "A dependency is not answering (the database restarting): retry after Retry-After",
    "content": {PROBLEM: {"schema": PROBLEM_SCHEMA}}}}
# Postgres stores no NUL character, in text (22021) or in jsonb (22P05): that is the caller's
# input, so it is their 400 rather than our 500.
NOT_STORABLE = frozenset({"22021", "22P05"})
# A dependency that does not answer (PostgreSQL restarting, refused connections): 503 with
# Retry-After, which a client may retry, rather than a 500, which says the request was wrong.
UNREACHABLE: tuple[type[Exception], ...] = (
    ConnectionError, asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError, asyncpg.exceptions.AdminShutdownError)
RETRY_AFTER_S = 2


def create_http_app(
    *, service: str, metrics: Metrics, checks: dict[str, ReadinessCheck], title: str = ""
) -> FastAPI:
    app = FastAPI(title=title or f"aicloud {service}", version="0.1.0", responses=ERRORS)
    app.add_exception_handler(StarletteHTTPException, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, _not_storable)  # type: ignore[arg-type]
    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _unavailable)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        """Every dependency answers; 503 names the ones that don't."""
        results = await asyncio.gather(*(_check(fn) for fn in checks.values()))
        report = dict(zip(checks, results, strict=True))
        ready = all(value == "ok" for value in report.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "service": service, "checks": report},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors as RFC 9457 problem details; validation errors list each field under ``errors``."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(exc.status_code).phrase,
                            "status": exc.status_code, "instance": request.url.path}
    if isinstance(exc.detail, list):
        body["detail"] = "the request is invalid: " + "; ".join(
            f"{_field(e)}: {e.get('msg')}" for e in exc.detail)
        body["errors"] = exc.detail
    else:
        body["detail"] = str(exc.detail)
    return JSONResponse(body, status_code=exc.status_code, media_type=PROBLEM,
                        headers=getattr(exc, "headers", None))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return await _problem(request, HTTPException(422, detail=errors))


async def _not_storable(request: Request, exc: DBAPIError) -> JSONResponse:
    if exc.connection_invalidated or isinstance(exc.orig, UNREACHABLE) or isinstance(
            getattr(exc.orig, "__cause__", None), UNREACHABLE):
        return await _unavailable(request, exc)
    if getattr(exc.orig, "sqlstate", None) not in NOT_STORABLE:
        raise exc
    return await _problem(request, HTTPException(
        400, detail="the request holds a NUL character (\\u0000), which cannot be stored: remove it"))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return await _problem(request, HTTPException(
        503, headers={"Retry-After": str(RETRY_AFTER_S)},
        detail="a service this request needs is not answering (the database may be restarting): "
               f"retry in {RETRY_AFTER_S} s"))


def _field(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", []) if p not in ("body", "query", "path", "header")]
    return ".".join(loc) or "request"


async def _check(fn: ReadinessCheck) -> str:
    try:
        await asyncio.wait_for(fn(), timeout=2.0)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"
