"""A small Python client for agent sandboxes, for scripts, notebooks and agents.

    from aicloud.sandboxes_client import SandboxClient

    with SandboxClient(team="legal").create("python") as box:
        box.write("data.csv", "a,b\\n1,2\\n")
        result = box.exec(code="print(open('data.csv').read())")
        print(result.stdout, result.exit_code, result.limit)

The runtime's URL is $AICLOUD_SANDBOXES_URL, else the local stack's agent runtime; the key is
$AICLOUD_API_KEY, else the local stack's key for ``team``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from aicloud.client import ApiError, _explain, api_key
from aicloud.local.stack import Stack, default_home

Sink = Callable[[str], None]


def runtime_url() -> str:
    if url := os.environ.get("AICLOUD_SANDBOXES_URL"):
        return url.rstrip("/")
    for entry in Stack(default_home()).read_state():
        if entry.get("name") == "agent-runtime":
            return str(entry["url"])
    raise ApiError("no agent runtime configured",
                   hint="start one with `aicloud dev up --detach` or set AICLOUD_SANDBOXES_URL")


@dataclass(frozen=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    limit: str | None
    duration_ms: float | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class SandboxClient:
    def __init__(self, *, team: str | None = None, base_url: str | None = None, key: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url or runtime_url(), timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {key or api_key(team)}"})

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the agent runtime at {self._http.base_url}",
                           hint="is it running? `aicloud dev status`") from None
        if response.status_code >= 400:
            raise ApiError(_explain(response), status=response.status_code)
        return response

    def templates(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/sandboxes/templates").json())

    def create(self, template: str = "python", *, ttl_s: int | None = None,
               allow_hosts: Iterable[str] = ()) -> Sandbox:
        body = {"template": template, "ttl_s": ttl_s, "allow_hosts": list(allow_hosts)}
        info = self.request("POST", "/v1/sandboxes", json={k: v for k, v in body.items() if v}).json()
        return Sandbox(self, info)

    def get(self, sandbox_id: str) -> Sandbox:
        return Sandbox(self, self.request("GET", f"/v1/sandboxes/{sandbox_id}").json())

    def list(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/sandboxes").json())

    def close(self) -> None:
        self._http.close()


class Sandbox:
    def __init__(self, client: SandboxClient, info: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        self.id: str = info["sandbox_id"]

    def exec(self, command: list[str] | None = None, *, code: str | None = None,
             timeout_s: float | None = None, stdin: str | None = None, env: dict[str, str] | None = None,
             on_stdout: Sink | None = None, on_stderr: Sink | None = None) -> ExecResult:
        """Run a command (argv) or code; output streams to ``on_stdout``/``on_stderr`` as it comes."""
        body = {"command": command, "code": code, "timeout_s": timeout_s, "stdin": stdin, "env": env or {}}
        out: list[str] = []
        err: list[str] = []
        end: dict[str, Any] = {}
        path = f"/v1/sandboxes/{self.id}/exec"
        http = self._client._http
        try:
            with http.stream("POST", path, json={k: v for k, v in body.items() if v is not None},
                             timeout=(timeout_s or 3600) + 30) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(_explain(response), status=response.status_code)
                for line in response.iter_lines():
                    message = json.loads(line)
                    for key, sink, store in (("stdout", on_stdout, out), ("stderr", on_stderr, err)):
                        if key in message:
                            store.append(message[key])
                            if sink is not None:
                                sink(message[key])
                    if "exit_code" in message:
                        end = message
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the agent runtime at {http.base_url}") from None
        return ExecResult("".join(out), "".join(err), end.get("exit_code", -1), end.get("limit"),
                          end.get("duration_ms"), end.get("error"))

    def write(self, path: str, data: bytes | str) -> dict[str, Any]:
        payload = data.encode() if isinstance(data, str) else data
        url = f"/v1/sandboxes/{self.id}/files/{path}"
        return dict(self._client.request("PUT", url, content=payload).json())

    def read(self, path: str) -> bytes:
        return self._client.request("GET", f"/v1/sandboxes/{self.id}/files/{path}").content

    def files(self, path: str = ".") -> list[dict[str, Any]]:
        url = f"/v1/sandboxes/{self.id}/files"
        return list(self._client.request("GET", url, params={"path": path}).json())

    def delete(self) -> None:
        self._client.request("DELETE", f"/v1/sandboxes/{self.id}")

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.delete()
        except ApiError as error:
            if error.status != 410:
                raise
