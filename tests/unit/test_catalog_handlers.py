"""catalog's workload handlers against an in-memory ``WorkloadStore``: no database, no bus."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import (
    DeleteEndpoint,
    EndpointReady,
    EndpointRejected,
    EndpointRequested,
    EndpointScanned,
    Envelope,
    ExtendNotebook,
    NotebookStarted,
)
from services.catalog import workloads
from services.catalog.domain import Change
from services.catalog.registry import ModelPublic, ModelVersionPublic
from services.catalog.workloads import EndpointCreate, NotebookCreate
from services.catalog.workloads_repo import EndpointPublic, NotebookPublic

pytestmark = pytest.mark.unit
NOW = datetime(2030, 1, 1, tzinfo=UTC)


@dataclass
class MemoryWorkloads:
    """``WorkloadStore`` in dicts, with the same rules as the SQL one for a (re)deploy."""

    endpoints: dict[str, EndpointPublic] = field(default_factory=dict)
    notebooks: dict[str, NotebookPublic] = field(default_factory=dict)
    models: dict[tuple[str, str], ModelPublic] = field(default_factory=dict)
    staged: list[Envelope] = field(default_factory=list)

    async def get_endpoint(self, *, name: str) -> EndpointPublic | None:
        return self.endpoints.get(name)

    async def list_endpoints(self, *, team: str) -> list[EndpointPublic]:
        return sorted((e for e in self.endpoints.values() if e.team == team and e.status != "deleted"),
                      key=lambda e: e.name)

    async def request_endpoint(self, *, name: str, team: str, model: str, request: dict[str, Any],
                               note: str) -> None:
        old = self.endpoints.get(name)
        restart = old is None or old.status in ("deleted", "failed", "rejected")
        self.endpoints[name] = EndpointPublic(
            name=name, team=team, model=model, request=request,
            status="requested" if restart else old.status,  # type: ignore[union-attr]
            version=None if restart else old.version,  # type: ignore[union-attr]
            history=[*(old.history if old else []), {"event": "requested", "detail": note}],
            created_at=NOW, updated_at=NOW)

    async def change_endpoint(self, *, name: str, change: Change) -> None:
        self.endpoints[name] = self._changed(self.endpoints[name], change)

    async def get_notebook(self, *, notebook_id: str) -> NotebookPublic | None:
        return self.notebooks.get(notebook_id)

    async def list_notebooks(self, *, team: str) -> list[NotebookPublic]:
        return [n for n in self.notebooks.values() if n.team == team]

    async def insert_notebook(self, *, notebook_id: str, team: str, request: dict[str, Any]) -> bool:
        if notebook_id in self.notebooks:
            return False
        self.notebooks[notebook_id] = NotebookPublic(notebook_id=notebook_id, team=team, status="requested",
                                                     request=request, created_at=NOW, updated_at=NOW)
        return True

    async def change_notebook(self, *, notebook_id: str, change: Change) -> None:
        self.notebooks[notebook_id] = self._changed(self.notebooks[notebook_id], change)

    async def mark_extended(self, *, notebook_id: str, extra_s: int) -> None:
        notebook = self.notebooks[notebook_id]
        stops_at = notebook.stops_at.timestamp() + extra_s if notebook.stops_at else None
        self.notebooks[notebook_id] = notebook.model_copy(update={
            "extended": True, "stops_at": datetime.fromtimestamp(stops_at, UTC) if stops_at else None})

    async def get_model(self, *, team: str, name: str) -> ModelPublic | None:
        return self.models.get((team, name))

    async def stage(self, event: Envelope) -> None:
        self.staged.append(event)

    @staticmethod
    def _changed(row: Any, change: Change) -> Any:
        entry = {"event": change.what, "detail": change.note}
        return row.model_copy(update={**change.fields, "history": [*row.history, entry]})


def serving(store: MemoryWorkloads, name: str = "emb", team: str = "legal", version: str = "1") -> None:
    store.endpoints[name] = EndpointPublic(name=name, team=team, status="ready", model="m",
                                           version=version, created_at=NOW, updated_at=NOW)


def model_version(version: int, artifact: str) -> ModelVersionPublic:
    return ModelVersionPublic(name="clause", version=version, job_id=f"j{version}", created_at=NOW,
                              artifacts=[{"name": artifact, "uri": f"s3://store/j{version}/{artifact}"}])


async def test_an_endpoint_name_another_team_holds_is_refused_and_nothing_is_staged() -> None:
    store = MemoryWorkloads()
    serving(store, team="research")
    with pytest.raises(workloads.Conflict, match="belongs to another team"):
        await workloads.deploy(EndpointCreate(name="emb", hf_model="acme/minilm"), team="legal",
                               product=None, store=store)
    assert store.staged == [] and store.endpoints["emb"].team == "research"


async def test_a_canary_is_refused_until_a_version_serves() -> None:
    store = MemoryWorkloads()
    body = EndpointCreate(name="emb", hf_model="acme/minilm", canary=10)
    with pytest.raises(workloads.Invalid) as refused:
        await workloads.deploy(body, team="legal", product=None, store=store)
    assert refused.value.errors[0]["loc"] == ["body", "canary"] and store.staged == []
    serving(store)
    deployed = await workloads.deploy(body, team="legal", product=None, store=store)
    assert (deployed.status, deployed.version) == ("ready", "1")  # the serving version keeps serving
    assert [(e.canary_percent, e.model) for e in store.staged] == [(10, "acme/minilm")]  # type: ignore[attr-defined]


async def test_a_registry_alias_deploys_the_version_it_names_from_its_artifact_folder() -> None:
    store = MemoryWorkloads(models={("legal", "clause"): ModelPublic(
        name="clause", latest_version=2, aliases={"production": 1},
        versions=[model_version(2, "weights.bin"), model_version(1, "model/model.json")])})
    deployed = await workloads.deploy(EndpointCreate(name="clause", model="clause", version="@production"),
                                      team="legal", product=None, store=store)
    [request] = store.staged
    assert isinstance(request, EndpointRequested)
    assert (request.version, request.artifact_uri, request.idle_s) == ("1", "s3://store/j1/model", 900)
    assert deployed.history == [{"event": "requested", "detail": "clause version 1"}]
    with pytest.raises(workloads.Invalid, match="no servable artifact"):
        await workloads.deploy(EndpointCreate(name="clause", model="clause"), team="legal", product=None,
                               store=store)


async def test_a_late_scan_or_rejection_does_not_move_a_serving_endpoint_back() -> None:
    store = MemoryWorkloads()
    serving(store)
    await workloads.on_endpoint_event(EndpointScanned(
        tenant="legal", endpoint="emb", model="m", version="2", allowed=True, format="onnx",
        size_bytes=2048), store=store)
    await workloads.on_endpoint_event(EndpointRejected(tenant="legal", endpoint="emb", reason="quota"),
                                      store=store)
    endpoint = store.endpoints["emb"]
    assert (endpoint.status, endpoint.version, endpoint.reason) == ("ready", "1", "quota")
    assert endpoint.scan["format"] == "onnx"
    assert [h["event"] for h in endpoint.history] == ["scan allowed", "rejected"]


async def test_a_ready_version_beside_the_serving_one_is_a_canary_until_it_takes_all_traffic() -> None:
    store = MemoryWorkloads()
    serving(store)

    async def ready(version: str, weight: int) -> EndpointPublic:
        await workloads.on_endpoint_event(EndpointReady(tenant="legal", endpoint="emb", model="m",
                                                        version=version, url="unix:/s", weight=weight),
                                          store=store)
        return store.endpoints["emb"]

    canary = await ready("2", 20)
    assert (canary.status, canary.version, canary.canary_version, canary.canary_percent) == (
        "canary", "1", "2", 20)
    whole = await ready("2", 100)
    assert (whole.status, whole.version, whole.canary_version, whole.canary_percent) == (
        "ready", "2", None, 0)


async def test_events_for_an_endpoint_never_recorded_here_change_nothing() -> None:
    store = MemoryWorkloads()
    await workloads.on_endpoint_event(EndpointRejected(tenant="legal", endpoint="elsewhere", reason="x"),
                                      store=store)
    assert store.endpoints == {}


async def test_another_teams_endpoint_cannot_be_deleted_and_a_deleted_one_not_twice() -> None:
    store = MemoryWorkloads()
    serving(store, team="research")
    with pytest.raises(workloads.NotFound, match="no endpoint 'emb' in team 'legal'"):
        await workloads.delete("emb", team="legal", store=store)
    await workloads.delete("emb", team="research", store=store)
    assert [type(e) for e in store.staged] == [DeleteEndpoint]
    store.endpoints["emb"] = store.endpoints["emb"].model_copy(update={"status": "deleted"})
    with pytest.raises(workloads.Conflict, match="already deleted"):
        await workloads.delete("emb", team="research", store=store)


async def test_a_running_notebook_is_extended_once() -> None:
    store = MemoryWorkloads()
    request = workloads.notebook_request(NotebookCreate(name="nb"), team="legal", product=None)
    await workloads.create_notebook(request, store=store)
    with pytest.raises(workloads.Conflict, match="already exists"):
        await workloads.create_notebook(request, store=store)
    with pytest.raises(workloads.Conflict, match="not running"):
        await workloads.extend_notebook("nb", extra_s=600, team="legal", store=store)
    await workloads.on_notebook_event(NotebookStarted(tenant="legal", notebook_id="nb", url="http://nb",
                                                      idle_timeout_s=3600, stops_at=NOW), store=store)
    extended = await workloads.extend_notebook("nb", extra_s=600, team="legal", store=store)
    assert extended.extended and extended.stops_at == datetime(2030, 1, 1, 0, 10, tzinfo=UTC)
    with pytest.raises(workloads.Conflict, match="already extended once"):
        await workloads.extend_notebook("nb", extra_s=600, team="legal", store=store)
    assert [type(e).__name__ for e in store.staged] == ["NotebookRequested", ExtendNotebook.__name__]


def test_a_notebook_idle_timeout_beyond_the_products_is_refused_naming_the_field() -> None:
    with pytest.raises(workloads.Invalid) as refused:
        workloads.notebook_request(NotebookCreate(idle_timeout_s=7200), team="legal", product=None)
    assert refused.value.errors == [{"loc": ["body", "idle_timeout_s"], "type": "value_error",
                                     "msg": "at most 3600 s for product notebook, 7200 s asked"}]
