"""The collector's HTTP API: Alertmanager's webhook, what fires, and SLO status."""

from __future__ import annotations

import json
import secrets
from importlib import resources
from typing import Annotated, Any

import httpx
import structlog
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from services.observability_collector.alerts import AlertBook, Webhook, WebhookAlert
from services.observability_collector.page import snapshot
from services.observability_collector.slos import Prometheus, SloFile, status

log = structlog.get_logger()
MAX_BODY = 1 << 20  # a full group of Alertmanager's alerts is far below this


def build_router(*, book: AlertBook, token: str, slos: SloFile, prometheus: Prometheus | None) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/alerts/webhook")
    async def webhook(request: Request,
                      authorization: Annotated[str, Header()] = "") -> dict[str, int]:
        """Alertmanager's webhook receiver (payload version 4): firing and resolved alerts go on
        the bus. A 5xx makes Alertmanager send them again; a 4xx says what was wrong."""
        if not token:
            raise HTTPException(503, detail="the alert webhook is off: set "
                                "AICLOUD_OBSERVABILITY_COLLECTOR_ALERT_WEBHOOK_TOKEN and Alertmanager's "
                                "http_config.authorization.credentials_file")
        given = authorization.removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, detail="this needs 'Authorization: Bearer <webhook token>'")
        body = await request.body()
        if len(body) > MAX_BODY:
            raise HTTPException(413, detail=f"{len(body)} bytes: a webhook call holds at most "
                                f"{MAX_BODY} (lower max_alerts in Alertmanager's webhook_config)")
        try:
            payload = Webhook.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                 for e in exc.errors()[:10])
            raise HTTPException(422, detail=f"not an Alertmanager webhook payload (version 4): "
                                f"{problems}"[:2000]) from None
        try:
            return await book.receive(payload)
        except Exception as exc:  # the bus: Alertmanager retries on 5xx, nothing is lost
            log.warning("alerts.publish_failed", error=str(exc)[:500])
            raise HTTPException(503, detail=f"the bus did not take the alerts: {exc}"[:500]) from None

    @router.get("/v1/alerts")
    async def firing() -> list[dict[str, Any]]:
        """What fires now, as relayed to the bus."""
        return [f.public() for f in book.firing.values()]

    @router.get("/v1/slo/status")
    async def slo_status() -> dict[str, Any]:
        """Each SLO: its SLI over its window, error budget left, burn rates, firing alerts."""
        return await status(slos=slos, prometheus=prometheus, book=book)

    @router.get("/observability", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = _asset("observability.html")
        found = await snapshot(prometheus=prometheus, slos=slos, book=book)
        return HTMLResponse(html.replace("/*SNAPSHOT*/null", json.dumps(found).replace("</", "<\\/")))

    @router.get("/observability/page.js", include_in_schema=False)
    async def page_js() -> Response:
        return Response(_asset("observability.js"), media_type="text/javascript")

    @router.get("/observability/snapshot")
    async def page_snapshot() -> dict[str, Any]:
        """What the page shows: each panel's rows, SLO budgets, firing alerts."""
        return await snapshot(prometheus=prometheus, slos=slos, book=book)

    return router


def _asset(name: str) -> str:
    return resources.files("services.observability_collector").joinpath(name).read_text()


async def restore_firing(book: AlertBook, alertmanager_url: str) -> None:
    """What fires already (a collector that restarted): known, not published again."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"{alertmanager_url.rstrip('/')}/api/v2/alerts",
                                        params={"active": "true", "silenced": "false"})
            response.raise_for_status()
            alerts = [WebhookAlert.model_validate({**a, "status": "firing"})
                      for a in response.json() if a.get("status", {}).get("state") == "active"]
    except (httpx.HTTPError, ValidationError, ValueError, AttributeError) as exc:
        log.warning("alerts.restore_failed", url=alertmanager_url, error=str(exc)[:300])
        return
    book.restore(alerts)
    log.info("alerts.restored", firing=len(alerts))
