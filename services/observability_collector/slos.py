"""Each SLO's standing now, read from Prometheus: its SLI over its window, the error budget
left, how fast the budget burns, and what fires for it (from the alert book).

The SLO file is read on each call; a broken file is reported with the field named while the last
good SLOs keep being answered for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import httpx
import structlog

from guardrails.slo import RECORD, Slo, SloFileError, error_ratio, load_slos
from services.observability_collector.alerts import AlertBook

log = structlog.get_logger()
BURN_WINDOWS = ("1h", "6h")


class SloFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.good: list[Slo] = []

    def current(self) -> tuple[list[Slo], str | None]:
        """The SLOs to answer for, and why the file on disk was refused (None when it was not)."""
        try:
            self.good = load_slos(self.path)
            return self.good, None
        except SloFileError as exc:
            return self.good, str(exc)


class Prometheus:
    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    async def vector(self, client: httpx.AsyncClient, query: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's samples; NaN (no traffic: 0/0) left out."""
        response = await client.get(f"{self.url}/api/v1/query", params={"query": query})
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {query!r}: {body.get('error')}")
        found = []
        for sample in body["data"]["result"]:
            value = float(sample["value"][1])
            if not math.isnan(value):
                found.append((sample["metric"], value))
        return found


async def status(*, slos: SloFile, prometheus: Prometheus | None, book: AlertBook) -> dict[str, Any]:
    found, file_error = slos.current()
    rows = [_row(slo, book) for slo in found]
    reach: dict[str, Any] = {"url": prometheus.url if prometheus else None, "reachable": False,
                             "error": None if prometheus else "no Prometheus configured "
                             "(AICLOUD_OBSERVABILITY_COLLECTOR_PROMETHEUS_URL)"}
    if prometheus is not None:
        try:
            async with httpx.AsyncClient(timeout=prometheus.timeout_s) as client:
                await _measure(client, prometheus, found, rows)
            reach["reachable"] = True
        except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
            reach["error"] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("slo.prometheus_unreachable", url=prometheus.url, error=reach["error"])
    return {"slo_file": {"path": str(slos.path), "error": file_error}, "prometheus": reach,
            "slos": rows, "alerts": [f.public() for f in book.firing.values()]}


def _row(slo: Slo, book: AlertBook) -> dict[str, Any]:
    return {"slo": slo.name, "service": slo.service, "objective": slo.objective,
            "time_window": slo.time_window, "sli": None, "error_budget_left": None,
            **{f"burn_rate_{w}": None for w in BURN_WINDOWS},
            "alerts": [f.public() for f in book.of(slo=slo.name)]}


async def _measure(client: httpx.AsyncClient, prometheus: Prometheus, slos: list[Slo],
                   rows: list[dict[str, Any]]) -> None:
    by_name = {row["slo"]: row for row in rows}
    budgets = {slo.name: float(slo.budget) for slo in slos}
    for window in BURN_WINDOWS:
        for labels, ratio in await prometheus.vector(client, RECORD.format(window=window)):
            name = labels.get("slo", "")
            if name in by_name:
                by_name[name][f"burn_rate_{window}"] = round(ratio / budgets[name], 4)
    for slo in slos:
        samples = await prometheus.vector(client, error_ratio(slo, slo.time_window))
        if samples:  # none: no traffic in the window yet, the SLI is unknown, not 100 %
            ratio = samples[0][1]
            by_name[slo.name]["sli"] = round(1 - ratio, 6)
            by_name[slo.name]["error_budget_left"] = round(1 - ratio / budgets[slo.name], 4)
