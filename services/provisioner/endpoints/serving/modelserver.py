"""The model server that runs inside a replica's sandbox, on a Unix socket (no network there).

    python -B -E -s .../serving/modelserver.py --model-dir DIR --socket PATH --name NAME

It is started by path, not with ``-m``: Python then puts this folder first on ``sys.path`` and
``bert.py`` beside it is imported as ``bert``, so the platform's packages (and their imports,
settings and logging) never load in the sandbox, and the sandbox needs only the interpreter,
its site-packages and this folder. ``-B`` because it must write nothing but its socket.

What it serves follows from the folder: a sentence-transformers BERT folder is an embeddings
model (``POST /v1/embeddings``, OpenAI's wire format), a ``model.json`` written by
``examples/train.py`` is a logistic regression (``POST /v1/predict``). Requests that arrive
while the encoder is busy are encoded together in its next pass: matrix products with a few
rows use the CPU poorly (one short sentence takes a third of the time of eight), so this is
what makes concurrent clients cheap. Results do not depend on what was batched with what.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from aiohttp import web

try:
    from . import bert
except ImportError:  # run by path (see above): this folder is first on sys.path
    import bert  # type: ignore[no-redef]

MAX_INPUTS = 256
MAX_BODY = 16 << 20
# After SIGTERM, requests in flight get this long: the host kills the replica 5 s after SIGTERM.
DRAIN_S = 3.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class Embeddings:
    kind = "embeddings"

    def __init__(self, encoder: bert.BertEncoder) -> None:
        self.encoder = encoder
        # One thread does the numpy work, so the event loop keeps answering (health checks).
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self._waiting: list[tuple[list[str], asyncio.Future[tuple[np.ndarray, list[int]]]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def answer(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        texts = _texts(body.get("input"))
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise BadRequest(f"encoding_format must be 'float' or 'base64', not {encoding!r}",
                             "encoding_format")
        vectors, counts = await self.encode(texts)
        data = [{"object": "embedding", "index": i, "embedding": _vector(v, encoding)}
                for i, v in enumerate(vectors)]
        tokens = sum(counts)
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        future: asyncio.Future[tuple[np.ndarray, list[int]]] = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            texts = [text for request, _ in batch for text in request]
            try:
                vectors, counts = await loop.run_in_executor(self._thread, self.encoder.encode, texts)
            except Exception as exc:  # each waiting request answers 500 with it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for request, future in batch:
                end = start + len(request)
                if not future.done():
                    future.set_result((vectors[start:end], counts[start:end]))
                start = end

    def close(self) -> None:
        self._thread.shutdown(wait=True)


class Predictor:
    """examples/train.py's model: p = sigmoid(w0 + sum(wi * xi * scale_i)), z clamped to +-30."""

    kind = "predict"

    def __init__(self, spec: dict[str, Any]) -> None:
        self.features: list[str] = list(spec["features"])
        self.weights = [float(w) for w in spec["weights"]]
        scaling = {str(k): float(v) for k, v in spec.get("scaling", {}).items()}
        if spec.get("kind") != "logistic-regression" or len(self.weights) != len(self.features) + 1:
            raise ValueError("model.json must be a logistic regression: one weight per feature, plus a bias")
        if unknown := set(scaling) - set(self.features):
            raise ValueError(f"model.json scales unknown features: {sorted(unknown)}")
        self.scale = [scaling.get(f, 1.0) for f in self.features]

    async def answer(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list of objects", "instances")
        if len(instances) > MAX_INPUTS:
            raise BadRequest(f"'instances' has {len(instances)} items; at most {MAX_INPUTS} are allowed",
                             "instances")
        predictions = []
        for i, instance in enumerate(instances):
            p = self.probability(self._row(i, instance))
            predictions.append({"probability": p, "label": int(p >= 0.5)})
        return {"predictions": predictions, "model": name}

    def probability(self, x: list[float]) -> float:
        z = self.weights[0] + sum(w * v * s for w, v, s in zip(self.weights[1:], x, self.scale, strict=True))
        return 1 / (1 + math.exp(-max(min(z, 30), -30)))

    def _row(self, i: int, instance: object) -> list[float]:
        if not isinstance(instance, dict):
            raise BadRequest(f"instances[{i}] must be an object of features", f"instances[{i}]")
        row = []
        for feature in self.features:
            value, param = instance.get(feature), f"instances[{i}].{feature}"
            if value is None:
                raise BadRequest(f"instances[{i}] is missing feature {feature!r}", param)
            if isinstance(value, bool) or not isinstance(value, int | float):  # orjson refuses inf, nan
                raise BadRequest(f"{param} must be a number, not {value!r}", param)
            row.append(float(value))
        return row

    def close(self) -> None:
        """Nothing to release."""


Model = Embeddings | Predictor


def load_model(folder: Path) -> Model:
    if (folder / "model.json").is_file():
        return Predictor(json.loads((folder / "model.json").read_text()))
    if bert.is_bert_folder(folder):
        return Embeddings(bert.BertEncoder.load(folder))
    raise ValueError(f"{folder} holds neither a model.json (logistic regression) nor a BERT "
                     "sentence-transformers model (config.json, model.safetensors, tokenizer.json)")


def _texts(value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest("'input' must be a non-empty string or a non-empty list of strings", "input")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed", "input")
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text:
            raise BadRequest(f"input[{i}] must be a non-empty string (token arrays are not supported)",
                             f"input[{i}]")
    return value


def _vector(vector: np.ndarray, encoding: str) -> np.ndarray | str:
    """As OpenAI sends it: a list of floats, or base64 of the little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode()
    return vector


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                        content_type="application/json")


def _error(status: int, message: str, param: str | None, kind: str = "invalid_request_error") -> web.Response:
    return _json(status, {"error": {"message": message, "type": kind, "param": param, "code": None}})


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers in OpenAI's error format; none ends the server."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _error(400, exc.message, exc.param)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason, None)
    except Exception:
        _log("request.failed", path=request.path, error=traceback.format_exc(limit=5))
        return _error(500, "the model server failed on this request", None, "server_error")


def build_app(model: Model, name: str) -> web.Application:
    # What the provisioner's watcher reads: traffic resets the idle timer and drives autoscaling.
    counters = {"requests": 0, "in_flight": 0}

    async def health(_: web.Request) -> web.Response:
        return _json(200, {"ok": True, "kind": model.kind, "model": name, **counters})

    async def models(_: web.Request) -> web.Response:
        return _json(200, {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                       "owned_by": "aicloud"}]})

    async def infer(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        counters["requests"] += 1
        counters["in_flight"] += 1
        try:
            return _json(200, await model.answer(body, name))
        finally:
            counters["in_flight"] -= 1

    app = web.Application(middlewares=[openai_errors], client_max_size=MAX_BODY)
    app.router.add_get("/healthz", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings" if model.kind == "embeddings" else "/v1/predict", infer)
    return app


async def serve(model_dir: Path, socket_path: Path | None, name: str, port: int | None = None) -> None:
    """Serve on the Unix socket (the local backend) or on a TCP port (a Kubernetes pod) until
    SIGTERM or SIGINT, then close it."""
    model = load_model(model_dir)
    runner = web.AppRunner(build_app(model, name), access_log=None, handle_signals=False,
                           shutdown_timeout=DRAIN_S)
    await runner.setup()
    if socket_path is not None:
        await web.UnixSite(runner, str(socket_path)).start()
        os.chmod(socket_path, 0o666)  # whoever connects on the host (the router) may be another user
    else:
        await web.TCPSite(runner, "0.0.0.0", port).start()  # all interfaces: the pod's port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _log("modelserver.ready", kind=model.kind, model=name, socket=str(socket_path or ""), port=port)
    await stop.wait()
    await runner.cleanup()
    model.close()
    _log("modelserver.stopped", model=name)


def _log(event: str, **fields: object) -> None:
    print(event, *(f"{k}={v!r}" for k, v in fields.items()), file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    listen = parser.add_mutually_exclusive_group(required=True)
    listen.add_argument("--socket", type=Path, help="Unix socket path (the local backend).")
    listen.add_argument("--port", type=int, help="TCP port on all interfaces (a Kubernetes pod).")
    parser.add_argument("--name", required=True)
    args = parser.parse_args(argv)
    if args.socket is not None:
        args.socket.unlink(missing_ok=True)  # a previous run's
    try:
        uvloop.run(serve(args.model_dir, args.socket, args.name, args.port))
        if args.socket is not None:
            args.socket.unlink(missing_ok=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log("modelserver.failed", error=f"{type(exc).__name__}: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
