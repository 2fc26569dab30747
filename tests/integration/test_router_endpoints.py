"""The router in front of the platform's own endpoints, driven by the provisioner's events.

Real NATS and Postgres; the model replicas are small aiohttp apps on Unix sockets that answer
in the OpenAI embeddings format (and ``/v1/predict``), as the provisioner's replicas do. Events
are published on the bus as the provisioner would publish them.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from contracts import (
    EndpointDeleted,
    EndpointReady,
    EndpointRetired,
    EndpointScaledToZero,
    Envelope,
    InferenceSampled,
    WakeEndpoint,
)
from guardrails.quality import QUALITY_FILE, load_quality
from services.inference_router.sketch import embedding_sketch
from services.observability_collector.quality import JudgeAccess, QualityJudge
from tests.integration.router_fixtures import ADMIN, RouterUnderTest, Usage

pytestmark = pytest.mark.integration


class Replica:
    """A model replica on a Unix socket: embeddings tagged with its name, predictions summed."""

    def __init__(self, name: str, socket: Path) -> None:
        self.name, self.socket = name, socket
        self.bodies: list[dict[str, Any]] = []
        self.answer = "Paris is the capital of France."
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"unix:{self.socket}"

    async def start(self) -> Replica:
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/predict", self._predict)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket)).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.bodies.append(body := await request.json())
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), 0.25]}
            for i, t in enumerate(texts)], "usage": {"prompt_tokens": 2, "total_tokens": 2}},
            headers={"x-replica": self.name})

    async def _chat(self, request: web.Request) -> web.Response:
        self.bodies.append(body := await request.json())
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.answer}}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 6, "total_tokens": 14}})

    async def _predict(self, request: web.Request) -> web.Response:
        self.bodies.append(body := await request.json())
        return web.json_response({"predictions": [sum(i) for i in body["instances"]],
                                  "replica": self.name})


class Bus:
    """The provisioner's side of the bus: publishes endpoint events, collects wake commands."""

    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc, self.prefix = nc, prefix
        self.wakes: list[WakeEndpoint] = []

    async def publish(self, event: Envelope) -> None:
        await self.nc.jetstream().publish(f"{self.prefix}.{event.SUBJECT}", event.model_dump_json().encode(),
                                          headers={"Nats-Msg-Id": str(event.event_id)})

    async def collect_wakes(self) -> None:
        async def collect(msg: Any) -> None:
            self.wakes.append(WakeEndpoint.model_validate_json(msg.data))

        await self.nc.subscribe(f"{self.prefix}.{WakeEndpoint.SUBJECT}", cb=collect)


@pytest.fixture
def sockets() -> Iterator[Path]:
    # A Unix socket path must fit in 108 bytes; pytest's tmp_path for a long test name does not.
    folder = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def replicas(sockets: Path) -> AsyncIterator[Callable[[str], Awaitable[Replica]]]:
    started: list[Replica] = []

    async def start(name: str) -> Replica:
        started.append(await Replica(name, sockets / f"{name}.sock").start())
        return started[-1]

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(nats_url)
    yield Bus(nc, prefix)
    await nc.close()


def ready(endpoint: str, *urls: str, version: str = "1", kind: str = "embeddings",
          **extra: Any) -> EndpointReady:
    return EndpointReady(tenant="legal", source="provisioner", endpoint=endpoint, model=endpoint,
                         version=version, url=urls[0], replicas=list(urls), kind=kind, **extra)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str,
                     timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (await found if inspect.isawaitable(found := check()) else found):
        assert asyncio.get_running_loop().time() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def route_of(router: RouterUnderTest, name: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.get("/admin/routes", headers=bearer(ADMIN))
    found: dict[str, Any] | None = r.json()["models"].get(name)
    return found


async def targets_become(router: RouterUnderTest, name: str, count: int | None) -> None:
    """Wait until the router routes ``name`` to ``count`` versions (None: not at all)."""
    async def check() -> bool:
        route = await route_of(router, name)
        return (route is None) if count is None else (route is not None and len(route["targets"]) == count)

    await eventually(check, f"{name} with {count} targets")


async def embed(client: httpx.AsyncClient, key: str, model: str, user: str = "u") -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": model, "input": ["hello", "hi"],
                                                     "user": user}, headers=bearer(key))


async def test_embeddings_reach_replicas_over_unix_sockets_in_turn(
        make_router: Callable[..., Any], replicas: Any, bus: Bus, usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    a, b = await replicas("a"), await replicas("b")
    await bus.publish(ready("embedder", a.url, b.url))
    await targets_become(router, "embedder", 1)
    async with httpx.AsyncClient(base_url=router.url) as client:
        answers = [await embed(client, key, "embedder") for _ in range(10)]
    assert all(r.status_code == 200 for r in answers), answers[0].text
    assert answers[0].json()["data"][0]["embedding"] == [5.0, 0.25]
    assert len(a.bodies) == 5 and len(b.bodies) == 5  # round-robin over both replicas
    assert a.bodies[0] == {"model": "embedder", "input": ["hello", "hi"], "user": "u"}
    events = await usage.wait_for(10)
    assert {(e["status"], e["operation"], e["target"], e["cost_usd"]) for e in events} == {
        ("ok", "embeddings", "platform/embedder/1/embedder", "0")}
    # what the collector watches for drift: a sketch of the vectors, never the input
    sketch = embedding_sketch(answers[0].json())
    assert sketch is not None and {tuple(e["embedding_sketch"]) for e in events} == {tuple(sketch)}


async def test_a_dead_replica_is_retried_on_the_next(
        make_router: Callable[..., Any], replicas: Any, bus: Bus, sockets: Path) -> None:
    router = await make_router()
    key = await router.key()
    alive = await replicas("alive")
    await bus.publish(ready("embedder", f"unix:{sockets / 'gone.sock'}", alive.url))
    await targets_become(router, "embedder", 1)
    async with httpx.AsyncClient(base_url=router.url) as client:
        codes = [(await embed(client, key, "embedder")).status_code for _ in range(6)]
    assert codes == [200] * 6 and len(alive.bodies) == 6


async def test_canary_weights_split_by_user_and_a_new_ready_changes_them(
        make_router: Callable[..., Any], replicas: Any, bus: Bus) -> None:
    router = await make_router()
    key = await router.key()
    stable, canary = await replicas("stable"), await replicas("canary")
    await bus.publish(ready("embedder", stable.url, version="1", weight=90))
    await bus.publish(ready("embedder", canary.url, version="2", weight=10))
    await targets_become(router, "embedder", 2)
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        for start in range(0, 1000, 50):
            codes = await asyncio.gather(*(embed(client, key, "embedder", user=f"user-{i}")
                                           for i in range(start, start + 50)))
            assert all(r.status_code == 200 for r in codes)
        assert abs(len(canary.bodies) / 1000 - 0.10) <= 0.04, len(canary.bodies)
        again = [await embed(client, key, "embedder", user="user-7") for _ in range(5)]
        assert len({r.headers.get("x-replica") for r in again}) <= 1  # sticky per user
        await bus.publish(ready("embedder", canary.url, version="2", weight=100))
        await bus.publish(ready("embedder", stable.url, version="1", weight=0))

        async def promoted() -> bool:
            route = await route_of(router, "embedder")
            return route is not None and [t["weight"] for t in route["targets"]] == [0, 100]

        await eventually(promoted, "the canary promoted to 100 %")
        before = len(canary.bodies)
        for i in range(20):
            await embed(client, key, "embedder", user=f"other-{i}")
    assert len(canary.bodies) - before == 20


async def test_a_scaled_to_zero_endpoint_holds_requests_and_wakes_once(
        make_router: Callable[..., Any], replicas: Any, bus: Bus) -> None:
    router = await make_router()
    key = await router.key()
    await bus.collect_wakes()
    replica = await replicas("a")
    await bus.publish(ready("embedder", replica.url))
    await targets_become(router, "embedder", 1)
    await replica.stop()  # the provisioner scales it to zero: retired first, then scaled_to_zero
    await bus.publish(EndpointRetired(tenant="legal", endpoint="embedder", version="1",
                                      reason="scaled_to_zero"))
    await bus.publish(EndpointScaledToZero(tenant="legal", endpoint="embedder", model="embedder",
                                           kind="embeddings", idle_s=900))
    await targets_become(router, "embedder", 0)
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        held = [asyncio.create_task(embed(client, key, "embedder", user=f"u{i}")) for i in range(3)]
        await eventually(lambda: len(bus.wakes) >= 1, "a WakeEndpoint")
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in held)
        # the demand an autoscaler (KEDA) would wake it on: the held requests
        assert 'aicloud_requests_in_flight{endpoint="embedder"} 3.0' in (await client.get("/metrics")).text
        replica = await replicas("a")  # the woken replica, on the same socket
        await bus.publish(ready("embedder", replica.url))
        answers = await asyncio.wait_for(asyncio.gather(*held), 10)
        assert 'aicloud_requests_in_flight{endpoint="embedder"} 0.0' in (await client.get("/metrics")).text
    assert [r.status_code for r in answers] == [200, 200, 200], answers[0].text
    assert all(r.json()["data"][0]["embedding"] == [5.0, 0.25] for r in answers)
    assert len(replica.bodies) == 3
    [wake] = bus.wakes
    assert (wake.endpoint, wake.tenant, wake.source) == ("embedder", "legal", "inference-router")


async def test_a_hold_gives_up_with_a_503_naming_the_endpoint(
        make_router: Callable[..., Any], bus: Bus) -> None:
    router = await make_router(wake_timeout_s=0.5)
    key = await router.key()
    await bus.collect_wakes()
    # scaled_to_zero before its retirement this time: the other order ends the same way
    await bus.publish(EndpointScaledToZero(tenant="legal", endpoint="sleepy", model="sleepy",
                                           kind="embeddings"))
    await bus.publish(EndpointRetired(tenant="legal", endpoint="sleepy", version="1",
                                      reason="scaled_to_zero"))
    await targets_become(router, "sleepy", 0)
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        r = await embed(client, key, "sleepy")
        models = await client.get("/v1/models", headers=bearer(key))
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    error = r.json()["error"]
    assert error["code"] == "endpoint_starting"
    assert "'sleepy' is starting" in error["message"] and "0.5 s" in error["message"]
    assert len(bus.wakes) == 1
    assert {m["id"]: m["kind"] for m in models.json()["data"]}["sleepy"] == "embeddings"


async def test_kind_team_and_quota_of_an_endpoint_are_enforced(
        make_router: Callable[..., Any], replicas: Any, bus: Bus) -> None:
    router = await make_router(queue_timeout_s=0)
    legal, legal_too, research = await router.key(), await router.key(), await router.key(team="research")
    replica = await replicas("a")
    await bus.publish(ready("embedder", replica.url, rpm_limit=3))
    await targets_become(router, "embedder", 1)
    async with httpx.AsyncClient(base_url=router.url) as client:
        chat = await client.post("/v1/chat/completions", headers=bearer(legal), json={
            "model": "embedder", "messages": [{"role": "user", "content": "hi"}]})
        other = await embed(client, research, "embedder")
        within = [await embed(client, key, "embedder") for key in (legal, legal_too, legal)]
        over = await embed(client, legal_too, "embedder")
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "wrong_operation"
    assert "call /v1/embeddings" in chat.json()["error"]["message"]
    assert other.status_code == 404 and other.json()["error"]["code"] == "model_not_found"
    assert [r.status_code for r in within] == [200, 200, 200]
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
    assert "team legal on endpoint 'embedder' is over its RPM limit (3/min)" in \
        over.json()["error"]["message"]
    assert len(replica.bodies) == 3


async def test_predict_passes_through_and_counts_no_tokens(
        make_router: Callable[..., Any], replicas: Any, bus: Bus, usage: Usage) -> None:
    router = await make_router()
    key = await router.key()
    replica = await replicas("p")
    await bus.publish(ready("scorer", replica.url, kind="predict"))
    await targets_become(router, "scorer", 1)
    body = {"model": "scorer", "instances": [[1, 2], [3, 4.5]]}
    async with httpx.AsyncClient(base_url=router.url) as client:
        r = await client.post("/v1/predict", json=body, headers=bearer(key))
        empty = await client.post("/v1/predict", json={"model": "scorer", "instances": []},
                                  headers=bearer(key))
        embeddings = await embed(client, key, "scorer")
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": [3, 7.5], "replica": "p"}
    assert replica.bodies == [body]
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "instances"
    assert embeddings.status_code == 400 and "call /v1/predict" in embeddings.text
    events = await usage.wait_for(2)  # an unparsable body is refused before it is a call
    [ok] = [e for e in events if e["status"] == "ok"]
    assert ok["operation"] == "predict" and ok["tokens_in"] == 0 and ok["tokens_out"] == 0


async def test_a_deleted_endpoint_is_unknown_and_releases_held_requests(
        make_router: Callable[..., Any], replicas: Any, bus: Bus) -> None:
    router = await make_router()
    key = await router.key()
    await bus.collect_wakes()
    replica = await replicas("a")
    await bus.publish(ready("embedder", replica.url))
    await bus.publish(EndpointScaledToZero(tenant="legal", endpoint="sleepy", model="sleepy",
                                           kind="embeddings"))
    await targets_become(router, "embedder", 1)
    await targets_become(router, "sleepy", 0)
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        held = asyncio.create_task(embed(client, key, "sleepy"))
        await eventually(lambda: len(bus.wakes) == 1, "a WakeEndpoint")
        for name in ("embedder", "sleepy"):
            await bus.publish(EndpointDeleted(tenant="legal", endpoint=name))
        await targets_become(router, "embedder", None)
        gone = await embed(client, key, "embedder")
        released = await asyncio.wait_for(held, 10)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    assert released.status_code == 404 and "deleted" in released.json()["error"]["message"]
    assert await route_of(router, "sleepy") is None


async def test_a_restarted_router_still_routes_and_still_holds_and_wakes(
        make_router: Callable[..., Any], replicas: Any, bus: Bus) -> None:
    first = await make_router()
    key = await first.key()
    await bus.collect_wakes()
    a, b = await replicas("a"), await replicas("b")
    await bus.publish(ready("embedder", a.url, version="1", weight=50))
    await bus.publish(ready("embedder", b.url, version="2", weight=50))
    await bus.publish(EndpointScaledToZero(tenant="legal", endpoint="sleepy", model="sleepy",
                                           kind="embeddings"))
    await targets_become(first, "embedder", 2)
    await targets_become(first, "sleepy", 0)
    await first.service.stop()
    second = await make_router()
    route = await route_of(second, "embedder")
    assert route is not None and [(t["version"], t["weight"]) for t in route["targets"]] == [
        ("1", 50), ("2", 50)] and route["kind"] == "embeddings" and route["teams"] == ["legal"]
    async with httpx.AsyncClient(base_url=second.url, timeout=30) as client:
        served = [await embed(client, key, "embedder", user=f"u{i}") for i in range(20)]
        held = asyncio.create_task(embed(client, key, "sleepy"))
        await eventually(lambda: len(bus.wakes) == 1, "a WakeEndpoint after the restart")
        sleepy = await replicas("sleepy")
        await bus.publish(ready("sleepy", sleepy.url))
        woken = await asyncio.wait_for(held, 10)
    assert all(r.status_code == 200 for r in served) and a.bodies and b.bodies
    assert woken.status_code == 200 and len(sleepy.bodies) == 1
    assert [w.endpoint for w in bus.wakes] == ["sleepy"]


async def test_sampled_answers_are_judged_through_the_router_and_the_judge_bills_platform(
        make_router: Callable[..., Any], replicas: Any, bus: Bus, usage: Usage, tmp_path: Path,
        nats_url: str, prefix: str) -> None:
    """policies/quality.yaml at a sample rate of 1: every answer of a platform chat endpoint goes
    on the bus; the collector's judge asks the fake evaluator through the router with the platform
    team's key; the score falls as the endpoint starts refusing; the ledger's event for each
    judgement is the platform team's, the endpoint's requests stay the caller's."""
    quality = tmp_path / "quality.yaml"
    quality.write_text(QUALITY_FILE.read_text().replace("sample_rate: 0.2", "sample_rate: 1.0")
                       .replace("window: 20", "window: 3"))
    router = await make_router(quality_file=quality)
    router.routes_file.write_text(router.routes_file.read_text()
                                  + "  judge:\n    targets: [{provider: openai, model: fake-judge}]\n")
    async def has_judge() -> bool:
        return await route_of(router, "judge") is not None

    await eventually(has_judge, "the judge route loaded")
    key, platform_key = await router.key(), await router.key(team="platform")
    replica = await replicas("qa")
    await bus.publish(ready("qa", replica.url, version="1", kind="chat"))
    await targets_become(router, "qa", 1)
    samples: list[InferenceSampled] = []

    async def collect(msg: Any) -> None:
        samples.append(InferenceSampled.model_validate_json(msg.data))

    await bus.nc.subscribe(f"{prefix}.{InferenceSampled.SUBJECT}", cb=collect)
    registry = CollectorRegistry()
    judge = QualityJudge(registry, policy=load_quality(quality),
                         access=JudgeAccess(router.url, lambda: platform_key))
    scores = []
    async with httpx.AsyncClient(base_url=router.url, timeout=30) as client:
        for n, answer in enumerate(["Paris is the capital of France."] * 3
                                   + ["Sorry, I cannot help with that."] * 3, start=1):
            replica.answer = answer
            asked = await client.post("/v1/chat/completions", headers=bearer(key), json={
                "model": "qa", "messages": [{"role": "user", "content": "What is the capital of France?"}]})
            assert asked.status_code == 200, asked.text
            await eventually(lambda n=n: len(samples) >= n, f"sample {n} on the bus")
            scores.append(await judge.judge(client, samples[-1]))
    assert [None if s is None else round(s, 3) for s in scores] == [1.0, 1.0, 1.0, 0.667, 0.333, 0.0]
    assert samples[0].endpoint == "qa" and samples[0].answer == "Paris is the capital of France."
    events = await usage.wait_for(12)
    judged = [e for e in events if e["model"] == "judge"]
    asked_qa = [e for e in events if e["model"] == "qa"]
    assert len(judged) == 6 and {e["tenant"] for e in judged} == {"platform"}
    assert len(asked_qa) == 6 and {e["tenant"] for e in asked_qa} == {"legal"}
