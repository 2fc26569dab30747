"""The demo's endpoints-and-notebooks part: the job's model and a packaged Hugging Face model
served through the router, a bad canary rolled back on its own, scale to zero and back, and
a notebook that will stop itself when idle."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx

from aicloud.client import PlatformClient
from aicloud.output import console, fail

CLAUSE = {"clause_words": 362, "citations": 6, "has_indemnity": 1, "has_liability_cap": 0}
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def walk(client: PlatformClient, router: httpx.Client, *, train: Any, home: Path, model_version: int) -> None:
    _deploy(
        client, "clause-risk", {"model": "clause-risk", "version": str(model_version), "scale_to_zero": False}
    )
    answer = router.post("/v1/predict", json={"model": "clause-risk", "instances": [CLAUSE]}).json()
    console.print(
        f"   aicloud deploy model --name clause-risk --version {model_version} -> POST /v1/predict: "
        f"risk {answer['predictions'][0]['probability']:.2f}"
    )

    embedder = _deploy(client, "embedder", {"hf_model": EMBEDDER, "idle_timeout_s": 10})
    texts = [
        "The supplier indemnifies the buyer.",
        "The buyer is held harmless by the supplier.",
        "Lunch is served at noon.",
    ]
    vectors = [
        d["embedding"]
        for d in router.post("/v1/embeddings", json={"model": "embedder", "input": texts}).json()["data"]
    ]
    console.print(f"   aicloud deploy model --hf-model {EMBEDDER} --name embedder (scanned, offline) ->")
    console.print(
        f"     similar clauses {cosine(vectors[0], vectors[1]):.2f}, unrelated "
        f"{cosine(vectors[0], vectors[2]):.2f} ({len(vectors[0])} dimensions)"
    )

    console.print("   version 2 of clause-risk renames a feature its callers send; deployed as a 50% canary:")
    version = train(feature_names="word_count,citations,has_indemnity,has_liability_cap")
    canary = _deploy(client, "clause-risk", {"model": "clause-risk", "version": str(version), "canary": 50})
    codes = [
        router.post(
            "/v1/predict", json={"model": "clause-risk", "instances": [CLAUSE], "user": f"u{i}"}
        ).status_code
        for i in range(40)
    ]
    console.print(
        f"     40 requests: {codes.count(200)} ok, {len(codes) - codes.count(200)} failed (the canary's)"
    )
    decided = _wait_for(client, "clause-risk", "canary rolled back", since=len(canary["history"]), timeout=90)
    console.print(f"     -> [bold]rolled back automatically[/]: {decided['detail']}")

    _wait_for(client, "embedder", "scaled to zero", since=len(embedder["history"]), timeout=60)
    console.print("   embedder idle for 10 s -> [bold]scaled to zero[/] (no replica runs, nothing is billed)")
    started = time.perf_counter()
    router.post("/v1/embeddings", json={"model": "embedder", "input": texts[0]}).raise_for_status()
    console.print(
        f"   next request: the router held it, woke the endpoint, answered in "
        f"{time.perf_counter() - started:.2f} s"
    )

    notebook = client.request("POST", "/v1/notebooks", json={"idle_timeout_s": 600})
    deadline = time.monotonic() + 120
    while notebook["status"] not in ("running", "stopped", "rejected") and time.monotonic() < deadline:
        time.sleep(0.5)
        notebook = client.request("GET", f"/v1/notebooks/{notebook['notebook_id']}")
    if notebook["status"] != "running":
        raise fail(f"notebook {notebook['notebook_id']} is {notebook['status']}: {notebook['reason']}")
    key = json.loads((home / "keys.json").read_text())[notebook["team"]]
    console.print(
        f"   aicloud create notebook -> JupyterLab with no network, stops after 10 min idle:\n"
        f"     {notebook['url']}lab?key={key}",
        highlight=False,
    )


def _deploy(client: PlatformClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    before = client.request("POST", "/v1/endpoints", json={"name": name, **body})
    deadline, seen = time.monotonic() + 180, len(before["history"])
    while time.monotonic() < deadline:
        endpoint = client.request("GET", f"/v1/endpoints/{name}")
        events = {e["event"] for e in endpoint["history"][seen - 1 :]}
        if {"failed", "rejected"} & events:
            raise fail(f"endpoint {name} did not deploy: {endpoint['reason']}")
        if "ready" in events and (not body.get("canary") or endpoint["canary_version"]):
            return dict(endpoint)
        time.sleep(0.3)
    raise fail(f"endpoint {name} was not ready in 180 s", hint=f"aicloud endpoints get {name}")


def _wait_for(client: PlatformClient, name: str, event: str, *, since: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = client.request("GET", f"/v1/endpoints/{name}")["history"]
        found = [e for e in history[since:] if e["event"] == event]
        if found:
            return dict(found[-1])
        time.sleep(0.5)
    raise fail(f"endpoint {name}: no '{event}' within {timeout:.0f} s", hint=f"aicloud endpoints get {name}")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )
