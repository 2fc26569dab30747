"""The catalog's endpoints and notebooks on the real bus and Postgres: what the platform API
accepts and refuses (naming the field), what it stages, and how lifecycle events move the read
model and its history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from contracts import (
    EndpointAdmitted,
    EndpointCanaryDecided,
    EndpointDeleted,
    EndpointReady,
    EndpointRequested,
    EndpointScanned,
    JobCompleted,
    NotebookAdmitted,
    NotebookStarted,
    NotebookStopped,
)
from contracts.jobs import Artifact
from services.catalog import registry
from services.catalog.app import build
from services.catalog.settings import CatalogSettings
from services.kit.runtime import Service

pytestmark = pytest.mark.integration
MINILM = {"hf_model": "acme/minilm"}


def api_client(catalog: Service) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=catalog.http), base_url="http://svc")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def catalog(service_env: dict[str, str], prefix: str,
                  tmp_path: Path) -> AsyncIterator[tuple[Service, httpx.AsyncClient, dict[str, str]]]:
    """The catalog alone, with the demo teams' keys."""
    settings = CatalogSettings(**service_env, db_schema=f"{prefix}_catalog",  # type: ignore[arg-type]
                               demo_keys_file=tmp_path / "keys.json")
    service = build(settings)
    await service.start()
    try:
        async with api_client(service) as client:
            yield service, client, json.loads((tmp_path / "keys.json").read_text())
    finally:
        await service.stop()
        await service.db.drop_schema()
        await service.db.dispose()


async def until(client: httpx.AsyncClient, path: str, key: str, field: str, value: Any) -> dict[str, Any]:
    """The resource once ``field`` is ``value`` (events are consumed asynchronously)."""
    async with asyncio.timeout(10):
        while True:
            found = (await client.get(path, headers=bearer(key))).json()
            if found.get(field) == value:
                return dict(found)
            await asyncio.sleep(0.05)


async def until_logged(client: httpx.AsyncClient, path: str, key: str, count: int) -> dict[str, Any]:
    """The resource once its history has ``count`` entries."""
    async with asyncio.timeout(10):
        while len((found := (await client.get(path, headers=bearer(key))).json())["history"]) < count:
            await asyncio.sleep(0.05)
    return dict(found)


def events(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["event"], entry["detail"]) for entry in resource["history"]]


async def register(catalog: Service, *, team: str, name: str, job_id: str, artifact: str) -> None:
    completed = JobCompleted(tenant=team, job_id=job_id, duration_s=1, stored_artifacts=[
        Artifact(name=artifact, uri=f"file:///store/{job_id}/{artifact}", sha256="0" * 64, bytes=1)])
    async with catalog.db.transaction() as session:
        await registry.register_version(session, team=team, name=name, request={}, completed=completed)


async def test_a_deploy_is_staged_and_followed_through_canary_promotion_and_delete(
    catalog: tuple[Service, httpx.AsyncClient, dict[str, str]], nats_url: str, prefix: str
) -> None:
    service, client, keys = catalog
    legal, research = bearer(keys["legal"]), bearer(keys["research"])
    nc = await nats.connect(nats_url)
    requested = await nc.jetstream().subscribe(f"{prefix}.{EndpointRequested.SUBJECT}",
                                               ordered_consumer=True)

    created = await client.post("/v1/endpoints", json={"name": "emb", **MINILM}, headers=legal)
    assert created.status_code == 202, created.text
    body = created.json()
    assert (body["team"], body["status"], body["model"], body["version"]) == (
        "legal", "requested", "acme/minilm", None)
    assert events(body) == [("requested", "acme/minilm version hf")]
    staged = EndpointRequested.model_validate_json((await requested.next_msg(timeout=10)).data)
    assert (staged.endpoint, staged.tenant, staged.model_source, staged.version, staged.idle_s) == (
        "emb", "legal", "huggingface", "hf", 900)
    assert body["request"]["event_id"] == str(staged.event_id)

    taken = await client.post("/v1/endpoints", json={"name": "emb", **MINILM}, headers=research)
    assert taken.status_code == 409
    assert taken.json()["detail"] == "endpoint name 'emb' belongs to another team: choose another name"
    early = await client.post("/v1/endpoints", json={"name": "emb", **MINILM, "canary": 10}, headers=legal)
    assert early.status_code == 422 and early.json()["errors"] == [{
        "loc": ["body", "canary"], "type": "value_error",
        "msg": "a canary needs a serving version of endpoint 'emb': deploy without --canary first"}]
    assert (await client.get("/v1/endpoints/emb", headers=research)).status_code == 404
    assert (await client.get("/v1/endpoints", headers=research)).json() == []

    await service.bus.publish(EndpointAdmitted(tenant="legal", endpoint="emb", request=staged,
                                               reason="fits"))
    await until_logged(client, "/v1/endpoints/emb", keys["legal"], 2)
    await service.bus.publish(EndpointScanned(tenant="legal", endpoint="emb", model="acme/minilm",
                                              version="hf", allowed=True, format="safetensors",
                                              size_bytes=1234, license="mit"))
    await until(client, "/v1/endpoints/emb", keys["legal"], "status", "provisioning")
    await service.bus.publish(EndpointReady(tenant="legal", endpoint="emb", model="acme/minilm",
                                            version="hf", url="unix:/x", replicas=["a", "b"],
                                            kind="embeddings"))
    ready = await until(client, "/v1/endpoints/emb", keys["legal"], "status", "ready")
    assert (ready["version"], ready["kind"]) == ("hf", "embeddings")
    assert ready["scan"] == {"version": "hf", "allowed": True, "format": "safetensors",
                             "size_bytes": 1234, "license": "mit", "findings": [], "reason": ""}
    assert events(ready)[1:] == [
        ("admitted", "fits"), ("scan allowed", "safetensors, 1,234 bytes, licence mit"),
        ("ready", "version hf at 100% on 2 replica(s)")]

    canary = await client.post("/v1/endpoints", json={"name": "emb", "hf_model": "acme/minilm-2",
                                                      "canary": 20}, headers=legal)
    assert canary.status_code == 202, canary.text
    assert (canary.json()["status"], canary.json()["version"], canary.json()["model"]) == (
        "ready", "hf", "acme/minilm-2")
    assert events(canary.json())[-1] == ("requested", "acme/minilm-2 version hf as a 20% canary")
    await service.bus.publish(EndpointReady(tenant="legal", endpoint="emb", model="acme/minilm-2",
                                            version="hf2", url="unix:/y", weight=20))
    split = await until(client, "/v1/endpoints/emb", keys["legal"], "status", "canary")
    assert (split["version"], split["canary_version"], split["canary_percent"]) == ("hf", "hf2", 20)
    await service.bus.publish(EndpointCanaryDecided(tenant="legal", endpoint="emb", stable="hf",
                                                    canary="hf2", outcome="promoted",
                                                    reason="no worse"))
    promoted = await until(client, "/v1/endpoints/emb", keys["legal"], "version", "hf2")
    assert (promoted["status"], promoted["canary_version"], promoted["reason"]) == (
        "ready", None, "no worse")
    assert events(promoted)[-1] == ("canary promoted", "version hf2: no worse")

    rolled = await client.post("/v1/endpoints/emb/rollback", headers=legal)
    assert rolled.status_code == 202 and rolled.json()["status"] == "ready"
    deleting = await client.delete("/v1/endpoints/emb", headers=legal)
    assert deleting.status_code == 202
    await service.bus.publish(EndpointDeleted(tenant="legal", endpoint="emb"))
    await until(client, "/v1/endpoints/emb", keys["legal"], "status", "deleted")
    assert (await client.get("/v1/endpoints", headers=legal)).json() == []
    again = await client.delete("/v1/endpoints/emb", headers=legal)
    assert (again.status_code, again.json()["detail"]) == (409, "endpoint 'emb' is already deleted")
    late = await client.post("/v1/endpoints/emb/rollback", headers=legal)
    assert (late.status_code, late.json()["detail"]) == (
        409, "endpoint 'emb' is deleted: nothing to roll back")

    reused = await client.post("/v1/endpoints", json={"name": "emb", **MINILM}, headers=research)
    assert reused.status_code == 202, reused.text
    assert (reused.json()["team"], reused.json()["status"], reused.json()["version"]) == (
        "research", "requested", None)
    await nc.close()


async def test_registry_deploys_resolve_the_version_or_say_what_is_missing(
    catalog: tuple[Service, httpx.AsyncClient, dict[str, str]]
) -> None:
    service, client, keys = catalog
    legal = bearer(keys["legal"])
    await register(service, team="legal", name="clause", job_id="j1", artifact="model/model.json")
    await register(service, team="legal", name="clause", job_id="j2", artifact="weights.bin")

    unknown = await client.post("/v1/endpoints", json={"name": "a", "model": "nope"}, headers=legal)
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404, "no model 'nope' in team 'legal': see `aicloud models list`")
    missing = await client.post("/v1/endpoints", json={"name": "a", "model": "clause", "version": "9"},
                                headers=legal)
    assert (missing.status_code, missing.json()["detail"]) == (
        404, "model 'clause' has no version '9' (versions: 2, 1)")
    unservable = await client.post("/v1/endpoints", json={"name": "a", "model": "clause"}, headers=legal)
    assert unservable.status_code == 422 and unservable.json()["errors"] == [{
        "loc": ["body", "model"], "type": "value_error",
        "msg": "version 2 of 'clause' has no servable artifact (model.json)"}]
    empty = await client.post("/v1/endpoints", json={"name": "a", "hf_model": ""}, headers=legal)
    assert empty.status_code == 422 and empty.json()["errors"][0]["loc"] == ["model"]

    deployed = await client.post("/v1/endpoints", json={"name": "a", "model": "clause", "version": "@1",
                                                        "idle_timeout_s": 60, "gpus": 1}, headers=legal)
    assert deployed.status_code == 202, deployed.text
    request = deployed.json()["request"]
    assert (request["model_source"], request["version"], request["artifact_uri"], request["idle_s"],
            request["gpus"]) == ("registry", "1", "file:///store/j1/model", 60, 1)
    assert events(deployed.json()) == [("requested", "clause version 1")]
    assert [e["name"] for e in (await client.get("/v1/endpoints", headers=legal)).json()] == ["a"]


async def test_a_notebook_is_refused_extended_once_and_stopped(
    catalog: tuple[Service, httpx.AsyncClient, dict[str, str]]
) -> None:
    service, client, keys = catalog
    legal, research = bearer(keys["legal"]), bearer(keys["research"])
    too_long = await client.post("/v1/notebooks", json={"name": "nb", "idle_timeout_s": 7200}, headers=legal)
    assert too_long.status_code == 422 and too_long.json()["errors"] == [{
        "loc": ["body", "idle_timeout_s"], "type": "value_error",
        "msg": "at most 3600 s for product notebook, 7200 s asked"}]
    created = await client.post("/v1/notebooks", json={"name": "nb", "gpus": 1}, headers=legal)
    assert created.status_code == 202, created.text
    assert (created.json()["status"], created.json()["request"]["gpu_type"],
            created.json()["request"]["idle_timeout_s"]) == ("requested", "a10-24gb", 3600)
    assert events(created.json()) == [("requested", "waiting for quota")]
    taken = await client.post("/v1/notebooks", json={"name": "nb"}, headers=legal)
    assert (taken.status_code, taken.json()["detail"]) == (
        409, "notebook 'nb' already exists: choose another name")
    early = await client.post("/v1/notebooks/nb/extend", json={}, headers=legal)
    assert (early.status_code, early.json()["detail"]) == (409, "notebook 'nb' is requested, not running")
    assert (await client.get("/v1/notebooks/nb", headers=research)).status_code == 404

    stops_at = datetime(2031, 1, 1, tzinfo=UTC)
    await service.bus.publish(NotebookAdmitted(tenant="legal", notebook_id="nb", reason="fits",
                                               request=created.json()["request"]))
    await until(client, "/v1/notebooks/nb", keys["legal"], "status", "starting")
    await service.bus.publish(NotebookStarted(tenant="legal", notebook_id="nb", url="http://nb",
                                              idle_timeout_s=3600, stops_at=stops_at))
    await until(client, "/v1/notebooks/nb", keys["legal"], "status", "running")
    extended = await client.post("/v1/notebooks/nb/extend", json={"extra_s": 600}, headers=legal)
    assert extended.status_code == 202, extended.text
    assert extended.json()["extended"] is True
    assert datetime.fromisoformat(extended.json()["stops_at"]) == stops_at + timedelta(seconds=600)
    twice = await client.post("/v1/notebooks/nb/extend", json={}, headers=legal)
    assert (twice.status_code, twice.json()["detail"]) == (
        409, "notebook 'nb' was already extended once; save your work and start a new one")

    assert (await client.post("/v1/notebooks/nb/stop", headers=legal)).status_code == 202
    await service.bus.publish(NotebookStopped(tenant="legal", notebook_id="nb", reason="stopped by its owner",
                                              saved=["a.ipynb"]))
    stopped = await until(client, "/v1/notebooks/nb", keys["legal"], "status", "stopped")
    assert (stopped["saved"], stopped["url"]) == (["a.ipynb"], "http://nb")
    assert events(stopped)[1:] == [
        ("admitted", "fits"), ("running", "idle shutdown after 3600 s"),
        ("extended", "hard cap extended by 600 s"), ("stopped", "stopped by its owner; saved a.ipynb")]
    again = await client.post("/v1/notebooks/nb/stop", headers=legal)
    assert (again.status_code, again.json()["detail"]) == (409, "notebook 'nb' is already stopped")
    assert [n["notebook_id"] for n in (await client.get("/v1/notebooks", headers=legal)).json()] == ["nb"]
    generated = await client.post("/v1/notebooks", json={}, headers=research)
    assert generated.status_code == 202 and generated.json()["notebook_id"].startswith("nb-")
