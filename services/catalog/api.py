"""The platform HTTP API behind ``aicloud create job`` and ``aicloud jobs ...``."""

# No `from __future__ import annotations`: FastAPI must see the route-local `Team` dependency.
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from contracts import CancelJob, JobRequested
from contracts.catalog import Product, dataset_project
from contracts.jobs import MAX_PARAMS, ParamKey, ParamValue
from services.catalog import handlers, keys, registry, repo
from services.catalog.domain import TERMINAL
from services.kit.db import Database
from services.kit.inbox import UnitOfWork
from services.kit.outbox import Outbox

MAX_OFFSET = 2**63 - 1  # the provisioner refuses a larger log offset, and its refusal was our 500
BEARER = HTTPBearer(auto_error=False, description="A team API key: `Authorization: Bearer ak_...`")


def build_auth(db: Database) -> Callable[..., Awaitable[str]]:
    async def authenticate(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> str:
        """The caller's team, from its API key. A key only ever sees its own team's data."""
        if credentials is None:
            raise HTTPException(401, detail="missing API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})
        async with db.transaction() as session:
            team = await keys.team_for(session, credentials.credentials)
        if team is None:
            raise HTTPException(401, detail="invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
        return team

    return authenticate


class JobCreate(BaseModel):
    """What a developer submits; the team comes from the API key."""

    name: str | None = Field(default=None, description="Job id; generated when omitted.")
    job_type: str = "training"
    product: str | None = Field(default=None, description="Default: fine-tune with GPUs, else cpu-small.")
    gpus: int = 0
    gpu_type: str | None = Field(default=None, description="One of the product's GPU types; "
                                 "default: the first the compute engine offers.")
    dataset: str | None = None
    command: list[str]
    params: dict[ParamKey, ParamValue] = Field(
        default_factory=dict, max_length=MAX_PARAMS,
        description="Hyper-parameters, given to the job as AICLOUD_PARAM_<KEY> (key upper-cased).")
    max_runtime_s: int | None = None
    model_name: str | None = Field(default=None, description="Register the output as this model.")
    image: str | None = Field(default=None, description="Container image (kubernetes backend), "
                              "pinned by digest: registry/name@sha256:<64 hex>.")


def build_router(*, db: Database, outbox: Outbox, products: dict[str, Product],
                 provisioner_url: str = "", ledger_url: str = "") -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["jobs"])
    Team = Annotated[str, Depends(build_auth(db))]

    @router.get("/whoami", tags=["auth"])
    async def whoami(team: Team) -> dict[str, str]:
        """The team the presented key belongs to."""
        return {"team": team}

    @router.get("/products", response_model=list[Product], tags=["catalog"])
    async def list_products() -> list[Product]:
        """The compute products developers can choose from."""
        return list(products.values())

    @router.post("/jobs", status_code=status.HTTP_202_ACCEPTED, response_model=repo.JobPublic)
    async def create_job(body: JobCreate, team: Team) -> repo.JobPublic:
        job_id = body.name or f"job-{uuid.uuid4().hex[:12]}"
        product = body.product or ("fine-tune" if body.gpus > 0 else "cpu-small")
        try:
            request = JobRequested(
                source="catalog", tenant=team, correlation_id=job_id, job_id=job_id,
                product=product, **body.model_dump(exclude={"name", "product"}),
            )
        except ValidationError as exc:
            raise HTTPException(422, detail=_body_errors(exc)) from None
        _check_against_catalog(request, products)
        try:
            async with db.transaction() as session:
                await handlers.submit_job(request, UnitOfWork(session, outbox))
                job = await repo.get_job(session, job_id=job_id, team=team)
        except handlers.JobIdTaken as exc:
            raise HTTPException(409, detail=str(exc)) from None
        outbox.wake()
        assert job is not None
        return job

    @router.get("/jobs", response_model=list[repo.JobPublic])
    async def list_jobs(team: Team, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[repo.JobPublic]:
        async with db.transaction() as session:
            return await repo.list_jobs(session, team=team, limit=limit)

    @router.get("/jobs/{job_id}", response_model=repo.JobPublic)
    async def get_job(job_id: str, team: Team) -> repo.JobPublic:
        async with db.transaction() as session:
            return await _team_job(session, job_id=job_id, team=team)

    @router.post("/jobs/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
                 response_model=repo.JobPublic)
    async def cancel_job(job_id: str, team: Team) -> repo.JobPublic:
        """Ask the job to stop: SIGTERM, grace period, kill; it ends `terminated` (cancelled)."""
        async with db.transaction() as session:
            job = await _team_job(session, job_id=job_id, team=team)
            if job.status in TERMINAL:
                raise HTTPException(409, detail=f"job {job_id!r} already ended ({job.status})")
            await outbox.add(session, CancelJob(tenant=team, job_id=job_id, source="catalog",
                                                correlation_id=job_id))
        outbox.wake()
        return job

    @router.get("/jobs/{job_id}/logs", response_model=LogChunk)
    async def job_logs(job_id: str, team: Team,
                       offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> LogChunk:
        """The job's output from ``offset`` (poll with ``next_offset`` to follow)."""
        async with db.transaction() as session:
            await _team_job(session, job_id=job_id, team=team)
        if not provisioner_url:
            raise HTTPException(503, detail="logs are not available: no provisioner configured")
        url = f"{provisioner_url}/internal/jobs/{team}/{job_id}/logs"
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(url, params={"offset": offset})
        if response.status_code == 404:
            return LogChunk(data="", next_offset=offset)  # not started yet
        response.raise_for_status()
        return LogChunk.model_validate(response.json())

    @router.get("/cluster", tags=["jobs"])
    async def cluster(team: Team) -> dict[str, Any]:
        """Where jobs run: the compute engine's nodes and GPUs by type (total, in use, free)."""
        if not provisioner_url:
            raise HTTPException(503, detail="the cluster is not visible: no provisioner configured")
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{provisioner_url}/internal/cluster")
        if response.status_code == 503:
            raise HTTPException(503, detail=response.json().get("detail", "the engine did not answer"))
        response.raise_for_status()
        return dict(response.json())

    @router.get("/bill", tags=["bill"])
    async def bill(team: Team, request: Request) -> Response:
        """Your team's spend: ``by`` (team, project, user_id, kind, model, gpu_type,
        resource_id; repeatable), ``from``/``to`` (ISO dates; default this month), ``step``
        (hour, day, week, month). Amounts are exact decimal strings."""
        if not ledger_url:
            raise HTTPException(503, detail="the bill is not available: no cost ledger configured")
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "team"]
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{ledger_url}/internal/spend",
                                        params=[*params, ("team", team)])
        if response.status_code == 422:
            raise HTTPException(422, detail=response.json().get("detail"))
        response.raise_for_status()
        return Response(response.content, media_type="application/json")

    @router.get("/models", tags=["models"])
    async def list_models(team: Team) -> list[dict[str, Any]]:
        """Your team's models with their latest version."""
        async with db.transaction() as session:
            return await registry.list_models(session, team=team)

    @router.get("/models/{name}", response_model=registry.ModelPublic, tags=["models"])
    async def get_model(name: str, team: Team) -> registry.ModelPublic:
        """A model: every version with its metrics, artifacts, lineage and aliases."""
        async with db.transaction() as session:
            model = await registry.get_model(session, team=team, name=name)
        if model is None:
            raise HTTPException(404, detail=f"no model {name!r} in team {team!r}")
        return model

    @router.put("/models/{name}/aliases/{alias}", response_model=registry.ModelPublic, tags=["models"])
    async def set_alias(name: str, alias: Annotated[str, PathParam(pattern=ALIAS_PATTERN)],
                        body: AliasTarget, team: Team) -> registry.ModelPublic:
        """Point an alias (e.g. production) at a version."""
        async with db.transaction() as session:
            if not await registry.set_alias(session, team=team, name=name, alias=alias,
                                            version=body.version):
                raise HTTPException(404, detail=f"model {name!r} has no version {body.version}")
            model = await registry.get_model(session, team=team, name=name)
        assert model is not None
        return model

    return router


ALIAS_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"


class AliasTarget(BaseModel):
    version: int = Field(ge=1, le=2**31 - 1)  # an INT column: past it, no version but a 500


class LogChunk(BaseModel):
    data: str
    next_offset: int


async def _team_job(session: AsyncSession, *, job_id: str, team: str) -> repo.JobPublic:
    """The team's job, or 404: another team's job is indistinguishable from none."""
    job = await repo.get_job(session, job_id=job_id, team=team)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r} in team {team!r}")
    return job


def _check_against_catalog(request: JobRequested, products: dict[str, Product]) -> None:
    """Refuse what can never be admitted before it becomes an event, naming the field."""
    errors = []
    if request.product not in products:
        errors.append({"loc": ["body", "product"], "type": "unknown_product",
                       "msg": f"unknown product {request.product!r}; choose one of "
                              + ", ".join(sorted(products))})
    product = products.get(request.product)
    if product is not None and request.gpu_type and request.gpu_type not in product.gpu_types:
        errors.append({"loc": ["body", "gpu_type"], "type": "unknown_gpu_type",
                       "msg": f"product {request.product} offers GPU types "
                              f"{', '.join(product.gpu_types) or 'none'}, not {request.gpu_type}"})
    if request.dataset is not None and dataset_project(request.dataset) is None:
        errors.append({"loc": ["body", "dataset"], "type": "invalid_dataset",
                       "msg": f"{request.dataset!r} is not a dataset path: use "
                              "projects/<project>/datasets/<name> (no '..')"})
    if errors:
        raise HTTPException(422, detail=errors)


def _body_errors(exc: ValidationError) -> list[dict[str, object]]:
    """Validation errors located in the request body, named as the caller named them."""
    renamed = {"job_id": "name"}
    return [
        {"loc": ["body", *(renamed.get(str(p), p) for p in err["loc"])], "msg": err["msg"],
         "type": err["type"]}
        for err in exc.errors(include_url=False)
    ]
