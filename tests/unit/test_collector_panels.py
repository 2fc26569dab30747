"""The page's and Grafana's queries: valid PromQL (promtool), one set for both, the dashboard
file in deploy/ in step with them; the page answers without Prometheus, saying why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from guardrails import POLICY_DIR
from services.observability_collector.alerts import AlertBook
from services.observability_collector.api import build_router
from services.observability_collector.page import snapshot
from services.observability_collector.panels import (
    DASHBOARD_FILE,
    PANELS,
    grafana_dashboard,
    render_dashboard,
)
from services.observability_collector.slos import Prometheus, SloFile
from tests.unit.promtool_fixtures import run_promtool

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_panel_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"aicloud:panel:{panel.id}", "expr": panel.query} for panel in PANELS]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool(promtool, "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(PANELS)} rules found" in result.stdout


def test_the_grafana_dashboard_in_deploy_is_built_from_the_same_queries() -> None:
    committed = (ROOT / DASHBOARD_FILE).read_text()
    assert committed == render_dashboard(), \
        "regenerate it: python -m services.observability_collector.panels"
    exprs = [panel["targets"][0]["expr"] for panel in json.loads(committed)["panels"]]
    assert exprs == [panel.query for panel in PANELS]
    assert grafana_dashboard()["__inputs"][0]["name"] == "DS_PROMETHEUS"


def test_the_page_and_its_snapshot_answer_without_prometheus() -> None:
    app = FastAPI()
    app.include_router(build_router(book=AlertBook(bus=None), token="t",  # type: ignore[arg-type]
                                    slos=SloFile(POLICY_DIR / "slos.yaml"), prometheus=None))
    http = TestClient(app)
    page = http.get("/observability")
    assert page.status_code == 200 and "/observability/page.js" in page.text
    assert '"router-availability"' in page.text  # the first snapshot is in the page itself
    found = http.get("/observability/snapshot").json()
    assert found["prometheus"]["reachable"] is False
    assert set(found["panels"]) == {panel.id for panel in PANELS}
    assert all(panel["rows"] == [] for panel in found["panels"].values())
    assert http.get("/observability/page.js").headers["content-type"].startswith("text/javascript")


class CannedPrometheus(Prometheus):
    """Answers every query with the same three series, as Prometheus' API would decode them."""

    async def vector(self, client: Any, query: str) -> list[tuple[dict[str, str], float]]:
        return [({"endpoint": name, "version": "1", "feature": "input_tokens"}, value)
                for name, value in (("mid", 0.5), ("low", 0.2), ("high", 0.9))]


async def test_the_page_shows_the_worst_first_low_quality_but_high_drift() -> None:
    found = await snapshot(prometheus=CannedPrometheus("http://unused"), book=AlertBook(bus=None),  # type: ignore[arg-type]
                           slos=SloFile(POLICY_DIR / "slos.yaml"))
    assert [r["endpoint"] for r in found["panels"]["quality"]["rows"]] == ["low", "mid", "high"]
    assert [r["endpoint"] for r in found["panels"]["drift"]["rows"]] == ["high", "mid", "low"]
    assert found["panels"]["quality"]["rows"][0] == {"endpoint": "low", "version": "1", "value": 0.2}
