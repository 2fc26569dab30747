"""The sandboxes API: create, exec (streamed as NDJSON), files, delete; a team sees its own only."""

import base64
import codecs
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator

from services.agent_runtime.errors import RuntimeRefusal
from services.agent_runtime.sandboxes import Sandboxes

NDJSON, BYTES = "application/x-ndjson", "application/octet-stream"
HOST = r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"


class SandboxCreate(BaseModel):
    template: str = Field(default="python", description="See GET /v1/sandboxes/templates.")
    ttl_s: int | None = Field(default=None, ge=10, le=86_400, description="Default: the template's.")
    allow_hosts: list[Annotated[str, Field(pattern=HOST, max_length=253)]] = Field(
        default_factory=list, max_length=50,
        description="Hosts reachable through the egress proxy (exact, or *.suffix); none by default.")


class ExecRequest(BaseModel):
    command: list[str] | None = Field(default=None, max_length=4096, description="argv, not a shell line.")
    code: str | None = Field(default=None, description="Source run by the template's interpreter "
                                                       "(python: python3 -c; shell: /bin/sh -c).")
    stdin: str | None = Field(default=None, max_length=10 << 20)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)

    @model_validator(mode="after")
    def _one(self) -> "ExecRequest":
        if (self.command is None) == (self.code is None):
            raise ValueError("give exactly one of `command` (an argv list) or `code` (source text)")
        return self


def refusal(exc: RuntimeRefusal) -> HTTPException:
    return HTTPException(exc.status, detail=exc.detail)


def build_router(sandboxes: Sandboxes, team_dep: Callable[..., Awaitable[str]]) -> APIRouter:
    router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
    Team = Annotated[str, Depends(team_dep)]

    @router.get("/templates")
    async def templates() -> list[dict[str, Any]]:
        """Templates, whether each is available here, its limits and its warm pool."""
        pools = sandboxes.pool_status()
        return [{"name": name, "description": p.template.description, "available": p.error is None,
                 "error": p.error, "packages": p.template.packages, "limits": p.template.limits.model_dump(),
                 "ttl_s": p.template.ttl_s, "idle_s": p.template.idle_s,
                 "max_lifetime_s": p.template.max_lifetime_s, "pool_ready": pools.get(name, 0)}
                for name, p in sorted(sandboxes.templates.items())]

    @router.post("", status_code=201)
    async def create(body: SandboxCreate, team: Team) -> dict[str, Any]:
        """Create a sandbox (from the warm pool when one is ready)."""
        try:
            live = await sandboxes.create(team=team, template=body.template, ttl_s=body.ttl_s,
                                          allow_hosts=tuple(body.allow_hosts))
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        return live.public()

    @router.get("")
    async def list_sandboxes(team: Team) -> list[dict[str, Any]]:
        return [live.public() for live in sandboxes.list(team=team)]

    @router.get("/{sandbox_id}")
    async def get(sandbox_id: str, team: Team) -> dict[str, Any]:
        try:
            return (await sandboxes.get(team=team, sandbox_id=sandbox_id)).public()
        except RuntimeRefusal as exc:
            raise refusal(exc) from None

    @router.delete("/{sandbox_id}")
    async def delete(sandbox_id: str, team: Team) -> dict[str, str]:
        try:
            await sandboxes.delete(team=team, sandbox_id=sandbox_id)
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        return {"sandbox_id": sandbox_id, "status": "deleted"}

    @router.post("/{sandbox_id}/exec", response_class=StreamingResponse, responses={200: {
        "description": "NDJSON, one object a line", "content": {NDJSON: {"schema": {"type": "object"}}}}})
    async def exec_(sandbox_id: str, body: ExecRequest, team: Team) -> StreamingResponse:
        """Run a command; the answer streams NDJSON lines `{"stdout": ..}` / `{"stderr": ..}` and
        ends with `{"exit_code": .., "limit": ..}` (`limit` names what ended it, if anything did)."""
        try:
            live = await sandboxes.get(team=team, sandbox_id=sandbox_id)
            template = live.template
            argv = (body.command if body.command is not None
                    else code_argv(template.name, template.template.interpreter, body.code))
            stream = sandboxes.exec(team=team, sandbox_id=sandbox_id, argv=argv, timeout_s=body.timeout_s,
                                    stdin=body.stdin.encode() if body.stdin else None, env=body.env)
            first = await anext(stream)
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        return StreamingResponse(ndjson(first, stream), media_type=NDJSON)

    @router.get("/{sandbox_id}/egress")
    async def egress(sandbox_id: str, team: Team) -> dict[str, Any]:
        """The sandbox's allowlist and every connection it asked for, allowed or denied."""
        try:
            live = await sandboxes.get(team=team, sandbox_id=sandbox_id)
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        proxy = sandboxes.egress.get(sandbox_id)
        decisions = [d.__dict__ for d in proxy.decisions] if proxy else []
        return {"allow_hosts": list(live.allow_hosts), "connections": decisions}

    @router.get("/{sandbox_id}/files")
    async def list_files(sandbox_id: str, team: Team, path: str = ".") -> list[dict[str, Any]]:
        try:
            return await sandboxes.list_files(team=team, sandbox_id=sandbox_id, path=path)
        except RuntimeRefusal as exc:
            raise refusal(exc) from None

    @router.put("/{sandbox_id}/files/{path:path}")
    async def put_file(sandbox_id: str, path: str, request: Request, team: Team) -> dict[str, Any]:
        """Write the request body to `path` in the workspace."""
        size = int(request.headers.get("content-length") or 0)
        if size > sandboxes.max_file_bytes:
            raise HTTPException(413, detail=f"the file is {size} bytes;"
                                f" the limit is {sandboxes.max_file_bytes}")
        try:
            answer = await sandboxes.put_file(team=team, sandbox_id=sandbox_id, path=path,
                                              data=await request.body())
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        return {"path": answer["path"], "size": answer["size"]}

    @router.get("/{sandbox_id}/files/{path:path}", response_class=Response, responses={200: {
        "description": "The file's bytes",
        "content": {BYTES: {"schema": {"type": "string", "format": "binary"}}}}})
    async def get_file(sandbox_id: str, path: str, team: Team) -> Response:
        try:
            data = await sandboxes.get_file(team=team, sandbox_id=sandbox_id, path=path)
        except RuntimeRefusal as exc:
            raise refusal(exc) from None
        return Response(data, media_type=BYTES)

    return router


def code_argv(template: str, interpreter: str, code: str | None) -> list[str]:
    assert code is not None
    return [interpreter, "-c", code] if template != "shell" else ["/bin/sh", "-c", code]


async def ndjson(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The daemon's messages as the API's lines; output is UTF-8 text (undecodable bytes as U+FFFD)."""
    decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"),
                2: codecs.getincrementaldecoder("utf-8")("replace")}

    def line(message: dict[str, Any]) -> bytes:
        if "fd" in message:
            text = decoders[message["fd"]].decode(base64.b64decode(message["data"]))
            return json.dumps({"stdout" if message["fd"] == 1 else "stderr": text}).encode() + b"\n"
        if "exit" in message:
            return json.dumps({"exit_code": message["exit"], "limit": message.get("limit"),
                               "duration_ms": message.get("duration_ms"), "cpu_s": message.get("cpu_s"),
                               "max_rss_kb": message.get("max_rss_kb"),
                               "error": message.get("error")}).encode() + b"\n"
        return json.dumps({"error": message.get("error", "the sandbox failed")}).encode() + b"\n"

    yield line(first)
    async for message in rest:
        yield line(message)
