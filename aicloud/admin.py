"""Calls to a service's admin API: its URL and token from the environment, else the local stack."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from aicloud.local.stack import Stack, default_home
from aicloud.output import fail


@dataclass(frozen=True)
class AdminEndpoint:
    component: str  # its name in the local stack
    url_env: str
    token_env: str
    token_file: str  # under $AICLOUD_HOME/run

    def resolve(self) -> tuple[str, dict[str, str]]:
        stack = Stack(default_home())
        url = os.environ.get(self.url_env) or next(
            (str(e["url"]) for e in stack.read_state() if e.get("name") == self.component), None)
        token_file = stack.home / "run" / self.token_file
        token = os.environ.get(self.token_env) or (
            token_file.read_text().strip() if token_file.exists() else None)
        if url is None or token is None:
            raise fail(f"no {self.component} configured",
                       hint=f"start the local stack (`aicloud dev up --detach`) or set {self.url_env} "
                            f"and {self.token_env}")
        return url.rstrip("/"), {"authorization": f"Bearer {token}"}


def admin_call(endpoint: AdminEndpoint, method: str, path: str, **kwargs: Any) -> Any:
    url, headers = endpoint.resolve()
    try:
        response = httpx.request(method, url + path, headers=headers, timeout=10, **kwargs)
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {endpoint.component} at {url}: {exc}",
                   hint="`aicloud dev status`") from None
    if response.status_code >= 400:
        raise fail(_message(response), code=2 if response.status_code in (400, 422) else 1)
    return response.json()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):  # OpenAI-style
        return str(body["error"].get("message"))
    if isinstance(body, dict) and body.get("errors"):  # problem details with fields
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
                         for e in body["errors"])
    return str(body.get("detail", body) if isinstance(body, dict) else body)
