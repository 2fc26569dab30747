"""The platform API behind ``aicloud deploy model``, ``aicloud endpoints ...`` and
``aicloud create notebook`` / ``aicloud notebooks ...``.

Everything that can be refused without running anything is refused here, naming the field:
an unknown model or version, an endpoint name another team owns, a canary outside 1-50 % or
without a serving version, replicas out of order, an idle timeout beyond the product's.
"""

# No `from __future__ import annotations`: FastAPI must see the route-local `Team` dependency.
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field, ValidationError, model_validator

from contracts import (
    DeleteEndpoint,
    EndpointRequested,
    ExtendNotebook,
    NotebookRequested,
    RollbackEndpoint,
    StopNotebook,
)
from contracts.catalog import Product
from contracts.endpoints import NAME_PATTERN
from services.catalog import registry, workloads
from services.catalog.workloads import EndpointPublic, NotebookPublic
from services.kit.db import Database
from services.kit.outbox import Outbox

ENDPOINT_PRODUCT, NOTEBOOK_PRODUCT = "real-time-endpoint", "notebook"
LIVE = {"requested", "provisioning", "scanning", "ready", "canary", "scaled_to_zero"}


class EndpointCreate(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Endpoint name (also how the router calls it).")
    model: str | None = Field(default=None, description="Registry model of your team.")
    version: str = Field(default="latest", description="Registry version number, `latest` or an alias.")
    hf_model: str | None = Field(default=None, description="Hugging Face id, resolved offline.")
    endpoint_type: Literal["real-time"] = "real-time"
    scale_to_zero: bool = True
    min_replicas: int = Field(default=0, ge=0, le=16)
    max_replicas: int = Field(default=1, ge=1, le=16)
    canary: int = Field(default=0, ge=0, description="Percent of traffic for the new version (1-50).")
    gpus: int = Field(default=0, ge=0, le=8, description="GPUs per replica.")
    idle_timeout_s: int | None = Field(default=None, gt=0)
    rpm_limit: int | None = Field(default=None, gt=0)
    tpm_limit: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> "EndpointCreate":
        if (self.model is None) == (self.hf_model is None):
            raise ValueError("give exactly one of model (a registry model) or hf_model (a Hugging Face id)")
        if self.canary and not 1 <= self.canary <= 50:
            raise ValueError(f"canary must be between 1 and 50 percent, not {self.canary}")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})"
            )
        return self


class NotebookCreate(BaseModel):
    name: str | None = Field(default=None, pattern=NAME_PATTERN, description="Generated when omitted.")
    gpus: int = Field(default=0, ge=0, le=8)
    idle_timeout_s: int | None = Field(default=None, gt=0, description="Default: the product's.")


class Extension(BaseModel):
    extra_s: int = Field(default=3600, gt=0, le=4 * 3600, description="At most 4 h, once.")


def build_router(
    *, db: Database, outbox: Outbox, products: dict[str, Product], authenticate: Callable[..., Awaitable[str]]
) -> APIRouter:
    router = APIRouter(prefix="/v1")
    Team = Annotated[str, Depends(authenticate)]
    endpoint_product, notebook_product = products.get(ENDPOINT_PRODUCT), products.get(NOTEBOOK_PRODUCT)

    @router.post(
        "/endpoints", status_code=status.HTTP_202_ACCEPTED, response_model=EndpointPublic, tags=["endpoints"]
    )
    async def deploy(body: EndpointCreate, team: Team) -> EndpointPublic:
        """Deploy a registry model version or a Hugging Face model; a new version of a live
        endpoint replaces it, or with ``canary`` gets that share of traffic until judged."""
        idle = body.idle_timeout_s or (endpoint_product.idle_shutdown_s if endpoint_product else None) or 900
        async with db.transaction() as session:
            current = await workloads.get_endpoint(session, body.name)
            if current is not None and current.team != team and current.status != "deleted":
                raise HTTPException(
                    409, detail=f"endpoint name {body.name!r} belongs to another team: choose another name"
                )
            serving = current is not None and current.status in LIVE and current.version is not None
            if body.canary and not serving:
                raise HTTPException(
                    422,
                    detail=[
                        _field(
                            "canary",
                            "a canary needs a serving version "
                            f"of endpoint {body.name!r}: deploy without --canary first",
                        )
                    ],
                )
            source, model, version, artifact_uri = await _source(session, team, body)
            try:
                request = EndpointRequested(
                    source="catalog",
                    tenant=team,
                    correlation_id=body.name,
                    endpoint=body.name,
                    model=model,
                    version=version,
                    gpus=body.gpus,
                    min_replicas=body.min_replicas,
                    max_replicas=body.max_replicas,
                    canary_percent=body.canary,
                    model_source=source,
                    artifact_uri=artifact_uri,
                    scale_to_zero=body.scale_to_zero,
                    idle_s=idle,
                    rpm_limit=body.rpm_limit,
                    tpm_limit=body.tpm_limit,
                )
            except ValidationError as exc:
                raise HTTPException(422, detail=exc.errors(include_url=False)) from None
            note = f"{model} version {version}" + (f" as a {body.canary}% canary" if body.canary else "")
            await workloads.upsert_endpoint_request(
                session,
                name=body.name,
                team=team,
                model=model,
                request=request.model_dump(mode="json"),
                note=note,
            )
            await outbox.add(session, request)
            found = await workloads.get_endpoint(session, body.name)
        outbox.wake()
        assert found is not None
        return found

    @router.get("/endpoints", response_model=list[EndpointPublic], tags=["endpoints"])
    async def list_endpoints(team: Team) -> list[EndpointPublic]:
        async with db.transaction() as session:
            return await workloads.list_endpoints(session, team)

    @router.get("/endpoints/{name}", response_model=EndpointPublic, tags=["endpoints"])
    async def get_endpoint(name: str, team: Team) -> EndpointPublic:
        async with db.transaction() as session:
            return await _team_endpoint(session, name, team)

    @router.post(
        "/endpoints/{name}/rollback", status_code=202, response_model=EndpointPublic, tags=["endpoints"]
    )
    async def rollback(name: str, team: Team) -> EndpointPublic:
        """Drop a running canary, or go back to the previous version."""
        async with db.transaction() as session:
            endpoint = await _team_endpoint(session, name, team)
            if endpoint.status not in LIVE:
                raise HTTPException(
                    409, detail=f"endpoint {name!r} is {endpoint.status}: nothing to roll back"
                )
            await outbox.add(
                session, RollbackEndpoint(tenant=team, endpoint=name, source="catalog", correlation_id=name)
            )
        outbox.wake()
        return endpoint

    @router.delete("/endpoints/{name}", status_code=202, response_model=EndpointPublic, tags=["endpoints"])
    async def delete(name: str, team: Team) -> EndpointPublic:
        async with db.transaction() as session:
            endpoint = await _team_endpoint(session, name, team)
            if endpoint.status == "deleted":
                raise HTTPException(409, detail=f"endpoint {name!r} is already deleted")
            await outbox.add(
                session, DeleteEndpoint(tenant=team, endpoint=name, source="catalog", correlation_id=name)
            )
        outbox.wake()
        return endpoint

    @router.post("/notebooks", status_code=202, response_model=NotebookPublic, tags=["notebooks"])
    async def create_notebook(body: NotebookCreate, team: Team) -> NotebookPublic:
        product = notebook_product
        limit = product.idle_shutdown_s if product and product.idle_shutdown_s else 3600
        if body.idle_timeout_s is not None and body.idle_timeout_s > limit:
            raise HTTPException(
                422,
                detail=[
                    _field(
                        "idle_timeout_s",
                        f"at most {limit} s for product {NOTEBOOK_PRODUCT}, {body.idle_timeout_s} s asked",
                    )
                ],
            )
        notebook_id = body.name or f"nb-{uuid.uuid4().hex[:10]}"
        request = NotebookRequested(
            source="catalog",
            tenant=team,
            correlation_id=notebook_id,
            notebook_id=notebook_id,
            gpus=body.gpus,
            idle_timeout_s=body.idle_timeout_s or limit,
            max_runtime_s=product.max_runtime_s if product else 43200,
            gpu_type=(product.gpu_types[0] if product and product.gpu_types and body.gpus else None),
        )
        async with db.transaction() as session:
            if not await workloads.insert_notebook(
                session, notebook_id=notebook_id, team=team, request=request.model_dump(mode="json")
            ):
                raise HTTPException(
                    409, detail=f"notebook {notebook_id!r} already exists: choose another name"
                )
            await outbox.add(session, request)
            found = await workloads.get_notebook(session, notebook_id)
        outbox.wake()
        assert found is not None
        return found

    @router.get("/notebooks", response_model=list[NotebookPublic], tags=["notebooks"])
    async def list_notebooks(team: Team) -> list[NotebookPublic]:
        async with db.transaction() as session:
            return await workloads.list_notebooks(session, team)

    @router.get("/notebooks/{notebook_id}", response_model=NotebookPublic, tags=["notebooks"])
    async def get_notebook(notebook_id: str, team: Team) -> NotebookPublic:
        async with db.transaction() as session:
            return await _team_notebook(session, notebook_id, team)

    @router.post(
        "/notebooks/{notebook_id}/stop", status_code=202, response_model=NotebookPublic, tags=["notebooks"]
    )
    async def stop_notebook(notebook_id: str, team: Team) -> NotebookPublic:
        async with db.transaction() as session:
            notebook = await _team_notebook(session, notebook_id, team)
            if notebook.status in ("stopped", "rejected"):
                raise HTTPException(409, detail=f"notebook {notebook_id!r} is already {notebook.status}")
            await outbox.add(
                session,
                StopNotebook(
                    tenant=team, notebook_id=notebook_id, source="catalog", correlation_id=notebook_id
                ),
            )
        outbox.wake()
        return notebook

    @router.post(
        "/notebooks/{notebook_id}/extend", status_code=202, response_model=NotebookPublic, tags=["notebooks"]
    )
    async def extend_notebook(notebook_id: str, body: Extension, team: Team) -> NotebookPublic:
        """Push the hard cap out once (at most 4 h)."""
        async with db.transaction() as session:
            notebook = await _team_notebook(session, notebook_id, team)
            if notebook.status != "running":
                raise HTTPException(409, detail=f"notebook {notebook_id!r} is {notebook.status}, not running")
            if notebook.extended:
                raise HTTPException(
                    409,
                    detail=f"notebook {notebook_id!r} was already extended once; "
                    "save your work and start a new one",
                )
            await workloads.mark_extended(session, notebook_id, body.extra_s)
            await outbox.add(
                session,
                ExtendNotebook(
                    tenant=team,
                    notebook_id=notebook_id,
                    extra_s=body.extra_s,
                    source="catalog",
                    correlation_id=notebook_id,
                ),
            )
            found = await workloads.get_notebook(session, notebook_id)
        outbox.wake()
        assert found is not None
        return found

    return router


async def _source(
    session: object, team: str, body: EndpointCreate
) -> tuple[Literal["registry", "huggingface"], str, str, str]:
    """(source, model, version, artifacts folder URI) of what is to be deployed."""
    if body.hf_model is not None:
        return "huggingface", body.hf_model, "hf", ""
    assert body.model is not None
    model = await registry.get_model(session, team=team, name=body.model)  # type: ignore[arg-type]
    if model is None:
        raise HTTPException(
            404, detail=f"no model {body.model!r} in team {team!r}: see `aicloud models list`"
        )
    wanted = body.version.lstrip("@")
    number = model.latest_version if wanted == "latest" else model.aliases.get(wanted)
    if number is None and wanted.isdigit():
        number = int(wanted)
    found = next((v for v in model.versions if v.version == number), None)
    if found is None:
        known = ", ".join(str(v.version) for v in model.versions)
        raise HTTPException(
            404, detail=f"model {body.model!r} has no version {body.version!r} (versions: {known})"
        )
    servable = [a for a in found.artifacts if str(a.get("name", "")).endswith("model.json")]
    if not servable:
        raise HTTPException(
            422,
            detail=[
                _field(
                    "model",
                    f"version {found.version} of {body.model!r} has no servable artifact (model.json)",
                )
            ],
        )
    folder = str(servable[0]["uri"]).rsplit("/", 1)[0]
    return "registry", body.model, str(found.version), folder


async def _team_endpoint(session: object, name: str, team: str) -> EndpointPublic:
    endpoint = await workloads.get_endpoint(session, name)  # type: ignore[arg-type]
    if endpoint is None or endpoint.team != team:
        raise HTTPException(404, detail=f"no endpoint {name!r} in team {team!r}")
    return endpoint


async def _team_notebook(session: object, notebook_id: str, team: str) -> NotebookPublic:
    notebook = await workloads.get_notebook(session, notebook_id)  # type: ignore[arg-type]
    if notebook is None or notebook.team != team:
        raise HTTPException(404, detail=f"no notebook {notebook_id!r} in team {team!r}")
    return notebook


def _field(name: str, message: str) -> dict[str, object]:
    return {"loc": ["body", name], "msg": message, "type": "value_error"}
