"""The live page ``/observability``: the panels' queries answered by Prometheus, SLO budgets and
what fires, as one snapshot the page polls (no reload)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from services.observability_collector.alerts import AlertBook
from services.observability_collector.panels import PANELS
from services.observability_collector.slos import Prometheus, SloFile, status

MAX_ROWS = 50  # per panel: the page is a summary, Grafana has the rest


async def snapshot(*, prometheus: Prometheus | None, slos: SloFile, book: AlertBook) -> dict[str, Any]:
    standing = await status(slos=slos, prometheus=prometheus, book=book)
    panels: dict[str, Any] = {p.id: {"title": p.title, "unit": p.unit, "by": p.by, "rows": []}
                              for p in PANELS}
    if prometheus is not None and standing["prometheus"]["reachable"]:
        async with httpx.AsyncClient(timeout=prometheus.timeout_s) as client:
            answers = await asyncio.gather(*(prometheus.vector(client, p.query) for p in PANELS),
                                           return_exceptions=True)
        for panel, answer in zip(PANELS, answers, strict=True):
            if isinstance(answer, BaseException):
                panels[panel.id]["error"] = f"{type(answer).__name__}: {answer}"[:300]
                continue
            ranked = sorted(answer, key=lambda sample: sample[1] if panel.lowest_first else -sample[1])
            ranked = ranked[:MAX_ROWS]
            panels[panel.id]["rows"] = [{**{label: labels.get(label, "") for label in panel.by},
                                         "value": value} for labels, value in ranked]
    return {"generated_at": datetime.now(UTC).isoformat(), "panels": panels, **standing}
