"""The HTTP face every service has: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.kit.metrics import Metrics

ReadinessCheck = Callable[[], Awaitable[None]]


def create_http_app(
    *, service: str, metrics: Metrics, checks: dict[str, ReadinessCheck], title: str = ""
) -> FastAPI:
    app = FastAPI(title=title or f"aicloud {service}", version="0.1.0")

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

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _check(fn: ReadinessCheck) -> str:
    try:
        await asyncio.wait_for(fn(), timeout=2.0)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "ok"
