"""The platform API behind ``aicloud deploy model``, ``aicloud endpoints ...`` and
``aicloud create notebook`` / ``aicloud notebooks ...``: each route opens one transaction,
calls its handler in ``workloads`` and answers a refusal with its status (404, 409, 422).
"""

# No `from __future__ import annotations`: FastAPI must see the route-local `Team` dependency.
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status

from contracts.catalog import Product
from services.catalog import workloads
from services.catalog.workloads import (
    ENDPOINT_PRODUCT,
    NOTEBOOK_PRODUCT,
    EndpointCreate,
    Extension,
    NotebookCreate,
)
from services.catalog.workloads_repo import EndpointPublic, NotebookPublic, SqlWorkloads, WorkloadStore
from services.kit.db import Database
from services.kit.outbox import Outbox

Authenticate = Callable[..., Awaitable[str]]
Transaction = Callable[[], AbstractAsyncContextManager[WorkloadStore]]


def build_router(
    *, db: Database, outbox: Outbox, products: dict[str, Product], authenticate: Authenticate
) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @asynccontextmanager
    async def transaction() -> AsyncIterator[WorkloadStore]:
        async with _answering_refusals(), db.transaction() as session:
            yield SqlWorkloads(session, outbox)

    _endpoint_routes(router, transaction, outbox, authenticate, products.get(ENDPOINT_PRODUCT))
    _notebook_routes(router, transaction, outbox, authenticate, products.get(NOTEBOOK_PRODUCT))
    return router


def _endpoint_routes(router: APIRouter, transaction: Transaction, outbox: Outbox,
                     authenticate: Authenticate, product: Product | None) -> None:
    Team = Annotated[str, Depends(authenticate)]

    @router.post(
        "/endpoints", status_code=status.HTTP_202_ACCEPTED, response_model=EndpointPublic, tags=["endpoints"]
    )
    async def deploy(body: EndpointCreate, team: Team) -> EndpointPublic:
        """Deploy a registry model version or a Hugging Face model; a new version of a live
        endpoint replaces it, or with ``canary`` gets that share of traffic until judged."""
        async with transaction() as store:
            found = await workloads.deploy(body, team=team, product=product, store=store)
        outbox.wake()
        return found

    @router.get("/endpoints", response_model=list[EndpointPublic], tags=["endpoints"])
    async def list_endpoints(team: Team) -> list[EndpointPublic]:
        async with transaction() as store:
            return await store.list_endpoints(team=team)

    @router.get("/endpoints/{name}", response_model=EndpointPublic, tags=["endpoints"])
    async def get_endpoint(name: str, team: Team) -> EndpointPublic:
        async with transaction() as store:
            return await workloads.team_endpoint(name, team=team, store=store)

    @router.post(
        "/endpoints/{name}/rollback", status_code=202, response_model=EndpointPublic, tags=["endpoints"]
    )
    async def rollback(name: str, team: Team) -> EndpointPublic:
        """Drop a running canary, or go back to the previous version."""
        async with transaction() as store:
            endpoint = await workloads.rollback(name, team=team, store=store)
        outbox.wake()
        return endpoint

    @router.delete("/endpoints/{name}", status_code=202, response_model=EndpointPublic, tags=["endpoints"])
    async def delete(name: str, team: Team) -> EndpointPublic:
        async with transaction() as store:
            endpoint = await workloads.delete(name, team=team, store=store)
        outbox.wake()
        return endpoint


def _notebook_routes(router: APIRouter, transaction: Transaction, outbox: Outbox,
                     authenticate: Authenticate, product: Product | None) -> None:
    Team = Annotated[str, Depends(authenticate)]

    @router.post("/notebooks", status_code=202, response_model=NotebookPublic, tags=["notebooks"])
    async def create_notebook(body: NotebookCreate, team: Team) -> NotebookPublic:
        async with _answering_refusals():
            request = workloads.notebook_request(body, team=team, product=product)
        async with transaction() as store:
            found = await workloads.create_notebook(request, store=store)
        outbox.wake()
        return found

    @router.get("/notebooks", response_model=list[NotebookPublic], tags=["notebooks"])
    async def list_notebooks(team: Team) -> list[NotebookPublic]:
        async with transaction() as store:
            return await store.list_notebooks(team=team)

    @router.get("/notebooks/{notebook_id}", response_model=NotebookPublic, tags=["notebooks"])
    async def get_notebook(notebook_id: str, team: Team) -> NotebookPublic:
        async with transaction() as store:
            return await workloads.team_notebook(notebook_id, team=team, store=store)

    @router.post(
        "/notebooks/{notebook_id}/stop", status_code=202, response_model=NotebookPublic, tags=["notebooks"]
    )
    async def stop_notebook(notebook_id: str, team: Team) -> NotebookPublic:
        async with transaction() as store:
            notebook = await workloads.stop_notebook(notebook_id, team=team, store=store)
        outbox.wake()
        return notebook

    @router.post(
        "/notebooks/{notebook_id}/extend", status_code=202, response_model=NotebookPublic, tags=["notebooks"]
    )
    async def extend_notebook(notebook_id: str, body: Extension, team: Team) -> NotebookPublic:
        """Push the hard cap out once (at most 4 h)."""
        async with transaction() as store:
            found = await workloads.extend_notebook(notebook_id, extra_s=body.extra_s, team=team,
                                                    store=store)
        outbox.wake()
        return found


@asynccontextmanager
async def _answering_refusals() -> AsyncIterator[None]:
    """A handler's refusal as the HTTP answer that names it."""
    try:
        yield
    except workloads.NotFound as exc:
        raise HTTPException(404, detail=str(exc)) from None
    except workloads.Conflict as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except workloads.Invalid as exc:
        raise HTTPException(422, detail=exc.errors) from None
