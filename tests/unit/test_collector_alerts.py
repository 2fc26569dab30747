"""Alertmanager's webhook into the collector: alerts reach the bus once, with their runbook;
bad calls get a clear 4xx, a bus that fails a 503 (Alertmanager retries); SLO status answers
without Prometheus and keeps the last good SLOs when the file breaks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from contracts import AlertFired, AlertResolved
from guardrails import POLICY_DIR
from services.observability_collector.alerts import AlertBook
from services.observability_collector.api import build_router
from services.observability_collector.slos import SloFile

pytestmark = pytest.mark.unit
TOKEN = "hook-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


class FakeBus:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.down = False

    async def publish(self, event: Any) -> None:
        if self.down:
            raise ConnectionError("nats: no servers available for connection")
        self.sent.append(event)


def alert(status: str = "firing", *, fingerprint: str = "a1b2c3", starts: str = "2026-12-05T10:00:00Z",
          **labels: str) -> dict[str, Any]:
    return {"status": status, "fingerprint": fingerprint, "startsAt": starts,
            "endsAt": "2026-12-05T10:07:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "labels": {"alertname": "SLOErrorBudgetBurnFast", "severity": "page",
                       "slo": "router-availability", "service": "inference-router", **labels},
            "annotations": {"summary": "inference-router router-availability: burning 14.4x",
                            "runbook_url": "docs/runbooks/slos.md#router-availability"}}


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "groupKey": "{}:{alertname=\"SLOErrorBudgetBurnFast\"}", "receiver": "aicloud",
            "status": alerts[0]["status"], "truncatedAlerts": 0, "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager", "alerts": list(alerts)}


def client(bus: FakeBus, *, token: str = TOKEN, slo_file: Path = POLICY_DIR / "slos.yaml",
           book: AlertBook | None = None) -> tuple[TestClient, AlertBook]:
    book = book or AlertBook(bus)
    app = FastAPI()
    app.include_router(build_router(book=book, token=token, slos=SloFile(slo_file), prometheus=None))
    return TestClient(app), book


def test_a_firing_alert_reaches_the_bus_once_with_its_runbook() -> None:
    bus = FakeBus()
    http, _ = client(bus)
    first = http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    again = http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)  # group_interval resend
    assert first.json() == {"fired": 1, "resolved": 0, "repeated": 0}
    assert again.json() == {"fired": 0, "resolved": 0, "repeated": 1}
    [event] = bus.sent
    assert isinstance(event, AlertFired)
    assert (event.alert, event.severity, event.tenant) == ("SLOErrorBudgetBurnFast", "critical", "platform")
    assert event.runbook_url == "docs/runbooks/slos.md#router-availability"
    assert event.labels["slo"] == "router-availability"
    assert http.get("/v1/alerts").json()[0]["alert"] == "SLOErrorBudgetBurnFast"


def test_resolved_goes_on_the_bus_and_a_restarted_collector_repeats_with_the_same_event_id() -> None:
    bus = FakeBus()
    http, book = client(bus)
    http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    restarted, _ = client(bus)  # forgot what it sent: JetStream drops the repeat by its id
    restarted.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    assert bus.sent[0].event_id == bus.sent[1].event_id
    ended = http.post("/v1/alerts/webhook", json=payload(alert("resolved")), headers=AUTH)
    assert ended.json()["resolved"] == 1
    assert isinstance(bus.sent[-1], AlertResolved) and bus.sent[-1].fingerprint == "a1b2c3"
    assert book.firing == {}
    refired = http.post("/v1/alerts/webhook", json=payload(alert(starts="2026-12-05T11:00:00Z")),
                        headers=AUTH)
    assert refired.json()["fired"] == 1 and bus.sent[-1].event_id != bus.sent[0].event_id


@pytest.mark.parametrize(("body", "named"), [
    ({"version": "3", "status": "firing", "alerts": []}, "version"),
    (payload({**alert(), "fingerprint": "../../etc"}), "alerts.0.fingerprint"),
    (payload({**alert(), "startsAt": "yesterday"}), "alerts.0.startsAt"),
    (payload({**alert(), "labels": {"bad label": "x"}}), "alerts.0.labels"),
    (payload({**alert(), "status": "exploded"}), "alerts.0.status"),
    (payload(*[alert(fingerprint=f"f{i}") for i in range(1001)]), "alerts"),
    ("not json at all", "body"),
])
def test_a_malformed_webhook_is_refused_naming_what_is_wrong(body: Any, named: str) -> None:
    bus = FakeBus()
    http, _ = client(bus)
    data = body if isinstance(body, str) else json.dumps(body)
    response = http.post("/v1/alerts/webhook", content=data, headers=AUTH)
    assert response.status_code == 422, response.text
    assert named in response.json()["detail"]
    assert bus.sent == []


def test_auth_size_and_a_switched_off_webhook() -> None:
    bus = FakeBus()
    http, _ = client(bus)
    assert http.post("/v1/alerts/webhook", json=payload(alert())).status_code == 401
    assert http.post("/v1/alerts/webhook", json=payload(alert()),
                     headers={"authorization": "Bearer wrong"}).status_code == 401
    huge = http.post("/v1/alerts/webhook", content=b"x" * (2 << 20), headers=AUTH)
    assert huge.status_code == 413 and "max_alerts" in huge.json()["detail"]
    off, _ = client(bus, token="")
    refused = off.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    assert refused.status_code == 503 and "ALERT_WEBHOOK_TOKEN" in refused.json()["detail"]
    assert bus.sent == []


def test_a_bus_that_fails_gets_a_503_so_alertmanager_sends_it_again() -> None:
    bus = FakeBus()
    bus.down = True
    http, book = client(bus)
    failed = http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    assert failed.status_code == 503 and "no servers available" in failed.json()["detail"]
    assert book.firing == {}  # not remembered as sent
    bus.down = False
    assert http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH).json()["fired"] == 1


def test_slo_status_without_prometheus_lists_the_slos_and_what_fires() -> None:
    bus = FakeBus()
    http, _ = client(bus)
    http.post("/v1/alerts/webhook", json=payload(alert()), headers=AUTH)
    found = http.get("/v1/slo/status").json()
    assert found["prometheus"]["reachable"] is False and "PROMETHEUS_URL" in found["prometheus"]["error"]
    rows = {row["slo"]: row for row in found["slos"]}
    assert rows["router-availability"]["sli"] is None  # unknown, never an invented 100 %
    assert [a["alert"] for a in rows["router-availability"]["alerts"]] == ["SLOErrorBudgetBurnFast"]
    assert rows["router-latency"]["alerts"] == []


def test_slo_status_keeps_the_last_good_slos_when_the_file_breaks(tmp_path: Path) -> None:
    slos = tmp_path / "slos.yaml"
    slos.write_text((POLICY_DIR / "slos.yaml").read_text())
    http, _ = client(FakeBus(), slo_file=slos)
    assert http.get("/v1/slo/status").json()["slo_file"]["error"] is None
    slos.write_text("slos:\n  router-availability:\n    objective: 2\n")
    found = http.get("/v1/slo/status").json()
    assert "slo router-availability: service: Field required" in found["slo_file"]["error"]
    assert len(found["slos"]) == 5
