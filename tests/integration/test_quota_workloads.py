"""quota on the long-lived workloads, on the real bus and Postgres: notebooks and endpoints
hold GPUs while they live (an endpoint what autoscaling may reach), get a clear "no" instead of
a queue, and give the GPUs back when they stop or are deleted — also under a reused name."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from sqlalchemy import text

from contracts import (
    EndpointAdmitted,
    EndpointDeleted,
    EndpointRejected,
    EndpointRequested,
    NotebookAdmitted,
    NotebookRejected,
    NotebookRequested,
    NotebookStopped,
)
from contracts.catalog import load_products
from tests.integration.test_services import make_service  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def held(quota: Any) -> list[tuple[str, int]]:
    async with quota.db.transaction() as session:
        rows = (await session.execute(text("SELECT resource_id, gpus FROM allocations"
                                           " WHERE released_at IS NULL ORDER BY resource_id"))).all()
    return [tuple(row) for row in rows]


async def until_held(quota: Any, expected: list[tuple[str, int]]) -> None:
    """Releases arrive on their own consumers, concurrently with requests: wait for them
    before asking, as a developer would see the notebook stopped before starting another."""
    for _ in range(100):
        if await held(quota) == expected:
            return
        await asyncio.sleep(0.1)
    assert await held(quota) == expected


async def test_notebooks_and_endpoints_hold_gpus_until_they_end(
    make_service: Callable[..., Any], nats_url: str, prefix: str  # noqa: F811
) -> None:
    quota = await make_service("quota", team_gpu_quotas={"legal": 3})
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    subs = {kind: await js.subscribe(f"{prefix}.{kind.SUBJECT}", ordered_consumer=True)
            for kind in (NotebookAdmitted, NotebookRejected, EndpointAdmitted, EndpointRejected)}

    async def answer(kind: type[Any]) -> Any:
        return kind.model_validate_json((await subs[kind].next_msg(timeout=10)).data)

    async def notebook(notebook_id: str, gpus: int) -> None:
        await quota.bus.publish(NotebookRequested(tenant="legal", notebook_id=notebook_id, gpus=gpus))

    async def endpoint(name: str, gpus: int, max_replicas: int) -> None:
        await quota.bus.publish(EndpointRequested(tenant="legal", endpoint=name, model="m", gpus=gpus,
                                                  max_replicas=max_replicas))

    await notebook("nb-a", 1)  # the notebook product allows one GPU
    assert (await answer(NotebookAdmitted)).notebook_id == "nb-a"
    await endpoint("emb", 1, 2)  # holds 1 GPU x 2 replicas
    assert (await answer(EndpointAdmitted)).endpoint == "emb"
    assert await held(quota) == [("endpoint:emb", 2), ("notebook:nb-a", 1)]

    await notebook("nb-b", 1)
    refused = await answer(NotebookRejected)
    assert refused.notebook_id == "nb-b"
    assert "over quota" in refused.reason and "uses 3 of 3" in refused.reason
    assert "stop a notebook or endpoint" in refused.reason
    await notebook("nb-huge", 2)
    too_big = await answer(NotebookRejected)
    assert too_big.notebook_id == "nb-huge" and "allows at most 1 GPUs" in too_big.reason

    await quota.bus.publish(NotebookStopped(tenant="legal", notebook_id="nb-a", reason="idle"))
    await quota.bus.publish(EndpointDeleted(tenant="legal", endpoint="emb", reason="deleted"))
    await until_held(quota, [])
    await notebook("nb-c", 1)
    assert (await answer(NotebookAdmitted)).notebook_id == "nb-c"
    # the name comes back after a delete: it holds GPUs again, counted against the quota
    await endpoint("emb", 1, 2)
    assert (await answer(EndpointAdmitted)).endpoint == "emb"
    assert await held(quota) == [("endpoint:emb", 2), ("notebook:nb-c", 1)]
    await endpoint("other", 1, 1)
    assert "uses 3 of 3" in (await answer(EndpointRejected)).reason
    # a redeploy that may reach more replicas asks for the difference only, and is checked
    await endpoint("emb", 1, 3)
    assert "this needs 1 more" in (await answer(EndpointRejected)).reason
    await endpoint("emb", 1, 1)  # fewer: admitted, and what the running version holds stays
    assert (await answer(EndpointAdmitted)).reason == "no GPUs needed beyond what it already holds"
    await quota.bus.publish(NotebookStopped(tenant="legal", notebook_id="nb-c", reason="idle"))
    await until_held(quota, [("endpoint:emb", 2)])
    await endpoint("emb", 1, 3)
    assert (await answer(EndpointAdmitted)).endpoint == "emb"
    assert await held(quota) == [("endpoint:emb", 3)]
    await nc.close()


async def test_a_team_may_keep_at_most_the_products_number_of_notebooks_even_without_gpus(
    make_service: Callable[..., Any], nats_url: str, prefix: str  # noqa: F811
) -> None:
    """CPU notebooks hold no GPU quota: the notebook product's max_per_team (policies/products.yaml)
    keeps a team from starting hundreds; a stopped one makes room, another team is not counted."""
    quota = await make_service("quota", team_gpu_quotas={"legal": 3, "research": 3})
    limit = load_products(ROOT / "policies" / "products.yaml")["notebook"].max_per_team
    assert limit is not None and limit >= 2
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    admitted = await js.subscribe(f"{prefix}.{NotebookAdmitted.SUBJECT}", ordered_consumer=True)
    rejected = await js.subscribe(f"{prefix}.{NotebookRejected.SUBJECT}", ordered_consumer=True)

    async def ask(team: str, notebook_id: str) -> None:
        await quota.bus.publish(NotebookRequested(tenant=team, notebook_id=notebook_id, gpus=0))

    for n in range(limit):
        await ask("legal", f"cpu-{n}")
        assert NotebookAdmitted.model_validate_json((await admitted.next_msg(timeout=10)).data).notebook_id \
            == f"cpu-{n}"
    await ask("legal", "one-too-many")
    refused = NotebookRejected.model_validate_json((await rejected.next_msg(timeout=10)).data)
    assert refused.notebook_id == "one-too-many"
    assert refused.reason == (f"team legal has {limit} notebooks live, the most product notebook allows; "
                              "stop or delete one (aicloud notebooks list) and ask again")
    async def next_admitted() -> NotebookAdmitted:
        return NotebookAdmitted.model_validate_json((await admitted.next_msg(timeout=10)).data)

    await ask("research", "theirs")  # another team's count is its own
    assert (await next_admitted()).tenant == "research"
    await ask("legal", "cpu-0")  # one already live asks again (a restart): not a new one
    assert (await next_admitted()).notebook_id == "cpu-0"
    await quota.bus.publish(NotebookStopped(tenant="legal", notebook_id="cpu-1", reason="idle"))
    await until_held(quota, sorted([(f"notebook:cpu-{n}", 0) for n in range(limit) if n != 1]
                                   + [("notebook:theirs", 0)]))
    await ask("legal", "one-too-many")
    assert NotebookAdmitted.model_validate_json((await admitted.next_msg(timeout=10)).data).notebook_id \
        == "one-too-many"
    await nc.close()
