"""What the platform API decides for endpoints and notebooks, and how their events move the
read model.

Everything that can be refused without running anything is refused here, naming the field:
an unknown model or version, an endpoint name another team owns, a canary outside 1-50 % or
without a serving version, replicas out of order, an idle timeout beyond the product's. Each
handler takes the request or event plus the ``WorkloadStore`` of one transaction; the routes
(``workloads_api``) open that transaction and answer a refusal with its HTTP status.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

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
from services.catalog.domain import (
    LIVE,
    EndpointEvent,
    NotebookEvent,
    Versions,
    endpoint_change,
    notebook_change,
    resolve_version,
)
from services.catalog.workloads_repo import EndpointPublic, NotebookPublic, WorkloadStore

ENDPOINT_PRODUCT, NOTEBOOK_PRODUCT = "real-time-endpoint", "notebook"
SOURCE = "catalog"


class NotFound(LookupError):
    """No such endpoint, notebook or model in the caller's team."""


class Conflict(ValueError):
    """The name is taken, or the workload's status does not allow it."""


class Invalid(ValueError):
    """Fields of the request that can never work, each named as a validation error names it."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__("; ".join(str(error.get("msg")) for error in errors))
        self.errors = errors

    @classmethod
    def field(cls, name: str, message: str) -> Invalid:
        return cls([{"loc": ["body", name], "msg": message, "type": "value_error"}])


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
    def _consistent(self) -> EndpointCreate:
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


async def on_endpoint_event(event: EndpointEvent, *, store: WorkloadStore) -> None:
    current = await store.get_endpoint(name=event.endpoint)
    if current is None:
        return  # published by someone else (straight onto NATS): nothing to show yet
    change = endpoint_change(event, Versions(current.version, current.canary_version))
    if change is not None:
        await store.change_endpoint(name=event.endpoint, change=change)


async def on_notebook_event(event: NotebookEvent, *, store: WorkloadStore) -> None:
    change = notebook_change(event)
    if change is not None:
        await store.change_notebook(notebook_id=event.notebook_id, change=change)


async def deploy(body: EndpointCreate, *, team: str, product: Product | None,
                 store: WorkloadStore) -> EndpointPublic:
    """Record the (re)deploy and stage ``endpoints.requested``: a name is the team's until
    deleted, and a canary needs a version already serving."""
    current = await store.get_endpoint(name=body.name)
    if current is not None and current.team != team and current.status != "deleted":
        raise Conflict(f"endpoint name {body.name!r} belongs to another team: choose another name")
    serving = current is not None and current.status in LIVE and current.version is not None
    if body.canary and not serving:
        raise Invalid.field("canary", "a canary needs a serving version "
                            f"of endpoint {body.name!r}: deploy without --canary first")
    request = await _endpoint_request(body, team=team, product=product, store=store)
    note = f"{request.model} version {request.version}" + (
        f" as a {body.canary}% canary" if body.canary else "")
    await store.request_endpoint(name=body.name, team=team, model=request.model,
                                 request=request.model_dump(mode="json"), note=note)
    await store.stage(request)
    return await team_endpoint(body.name, team=team, store=store)


async def rollback(name: str, *, team: str, store: WorkloadStore) -> EndpointPublic:
    """Stage ``endpoints.rollback`` for a live endpoint."""
    endpoint = await team_endpoint(name, team=team, store=store)
    if endpoint.status not in LIVE:
        raise Conflict(f"endpoint {name!r} is {endpoint.status}: nothing to roll back")
    await store.stage(RollbackEndpoint(tenant=team, endpoint=name, source=SOURCE, correlation_id=name))
    return endpoint


async def delete(name: str, *, team: str, store: WorkloadStore) -> EndpointPublic:
    """Stage ``endpoints.delete`` unless it is deleted already."""
    endpoint = await team_endpoint(name, team=team, store=store)
    if endpoint.status == "deleted":
        raise Conflict(f"endpoint {name!r} is already deleted")
    await store.stage(DeleteEndpoint(tenant=team, endpoint=name, source=SOURCE, correlation_id=name))
    return endpoint


async def team_endpoint(name: str, *, team: str, store: WorkloadStore) -> EndpointPublic:
    """The team's endpoint: another team's is indistinguishable from none."""
    endpoint = await store.get_endpoint(name=name)
    if endpoint is None or endpoint.team != team:
        raise NotFound(f"no endpoint {name!r} in team {team!r}")
    return endpoint


def notebook_request(body: NotebookCreate, *, team: str, product: Product | None) -> NotebookRequested:
    """The notebook asked for, within the product's idle timeout (its default)."""
    limit = product.idle_shutdown_s if product and product.idle_shutdown_s else 3600
    if body.idle_timeout_s is not None and body.idle_timeout_s > limit:
        raise Invalid.field("idle_timeout_s", f"at most {limit} s for product {NOTEBOOK_PRODUCT}, "
                            f"{body.idle_timeout_s} s asked")
    notebook_id = body.name or f"nb-{uuid.uuid4().hex[:10]}"
    return NotebookRequested(
        source=SOURCE, tenant=team, correlation_id=notebook_id, notebook_id=notebook_id,
        gpus=body.gpus, idle_timeout_s=body.idle_timeout_s or limit,
        max_runtime_s=product.max_runtime_s if product else 43200,
        gpu_type=(product.gpu_types[0] if product and product.gpu_types and body.gpus else None),
    )


async def create_notebook(request: NotebookRequested, *, store: WorkloadStore) -> NotebookPublic:
    """Record the notebook and stage ``notebooks.requested``; a name is used once."""
    if not await store.insert_notebook(notebook_id=request.notebook_id, team=request.tenant,
                                       request=request.model_dump(mode="json")):
        raise Conflict(f"notebook {request.notebook_id!r} already exists: choose another name")
    await store.stage(request)
    return await team_notebook(request.notebook_id, team=request.tenant, store=store)


async def stop_notebook(notebook_id: str, *, team: str, store: WorkloadStore) -> NotebookPublic:
    notebook = await team_notebook(notebook_id, team=team, store=store)
    if notebook.status in ("stopped", "rejected"):
        raise Conflict(f"notebook {notebook_id!r} is already {notebook.status}")
    await store.stage(StopNotebook(tenant=team, notebook_id=notebook_id, source=SOURCE,
                                   correlation_id=notebook_id))
    return notebook


async def extend_notebook(notebook_id: str, *, extra_s: int, team: str,
                          store: WorkloadStore) -> NotebookPublic:
    """A running notebook's hard cap moves out once: more would make the cap meaningless."""
    notebook = await team_notebook(notebook_id, team=team, store=store)
    if notebook.status != "running":
        raise Conflict(f"notebook {notebook_id!r} is {notebook.status}, not running")
    if notebook.extended:
        raise Conflict(f"notebook {notebook_id!r} was already extended once; "
                       "save your work and start a new one")
    await store.mark_extended(notebook_id=notebook_id, extra_s=extra_s)
    await store.stage(ExtendNotebook(tenant=team, notebook_id=notebook_id, extra_s=extra_s,
                                     source=SOURCE, correlation_id=notebook_id))
    return await team_notebook(notebook_id, team=team, store=store)


async def team_notebook(notebook_id: str, *, team: str, store: WorkloadStore) -> NotebookPublic:
    """The team's notebook: another team's is indistinguishable from none."""
    notebook = await store.get_notebook(notebook_id=notebook_id)
    if notebook is None or notebook.team != team:
        raise NotFound(f"no notebook {notebook_id!r} in team {team!r}")
    return notebook


async def _endpoint_request(body: EndpointCreate, *, team: str, product: Product | None,
                            store: WorkloadStore) -> EndpointRequested:
    source, model, version, artifact_uri = await _source(body, team=team, store=store)
    idle = body.idle_timeout_s or (product.idle_shutdown_s if product else None) or 900
    try:
        return EndpointRequested(
            source=SOURCE, tenant=team, correlation_id=body.name, endpoint=body.name, model=model,
            version=version, gpus=body.gpus, min_replicas=body.min_replicas,
            max_replicas=body.max_replicas, canary_percent=body.canary, model_source=source,
            artifact_uri=artifact_uri, scale_to_zero=body.scale_to_zero, idle_s=idle,
            rpm_limit=body.rpm_limit, tpm_limit=body.tpm_limit,
        )
    except ValidationError as exc:
        raise Invalid(exc.errors(include_url=False)) from None


async def _source(body: EndpointCreate, *, team: str, store: WorkloadStore
                  ) -> tuple[Literal["registry", "huggingface"], str, str, str]:
    """(source, model, version, artifacts folder URI) of what is to be deployed."""
    if body.hf_model is not None:
        return "huggingface", body.hf_model, "hf", ""
    assert body.model is not None
    model = await store.get_model(team=team, name=body.model)
    if model is None:
        raise NotFound(f"no model {body.model!r} in team {team!r}: see `aicloud models list`")
    number = resolve_version(body.version, latest=model.latest_version, aliases=model.aliases)
    found = next((v for v in model.versions if v.version == number), None)
    if found is None:
        known = ", ".join(str(v.version) for v in model.versions)
        raise NotFound(f"model {body.model!r} has no version {body.version!r} (versions: {known})")
    servable = [a for a in found.artifacts if str(a.get("name", "")).endswith("model.json")]
    if not servable:
        raise Invalid.field("model", f"version {found.version} of {body.model!r} has no servable "
                            "artifact (model.json)")
    return "registry", body.model, str(found.version), str(servable[0]["uri"]).rsplit("/", 1)[0]
