"""The CLI's HTTP client for the platform API, with errors a person can act on."""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import httpx

from aicloud.local.stack import Stack, default_home

BAD_USAGE = {400, 409, 422}


class ApiError(RuntimeError):
    def __init__(self, message: str, hint: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.hint = hint
        self.status = status

    @property
    def exit_code(self) -> int:
        """2 for bad usage (the request itself is wrong), 1 for everything else."""
        return 2 if self.status in BAD_USAGE else 1


def api_url() -> str:
    """$AICLOUD_API_URL, else the catalog of the local stack under $AICLOUD_HOME."""
    if url := os.environ.get("AICLOUD_API_URL"):
        return url.rstrip("/")
    for entry in Stack(default_home()).read_state():
        if entry.get("name") == "catalog":
            return str(entry["url"])
    raise ApiError("no platform API configured",
                   hint="start one with `aicloud dev up --detach` or set AICLOUD_API_URL")


def api_key(team: str | None) -> str:
    """$AICLOUD_API_KEY, else the local stack's demo key for ``team`` under $AICLOUD_HOME."""
    if key := os.environ.get("AICLOUD_API_KEY"):
        return key
    keys_file = default_home() / "keys.json"
    if team is None:
        raise ApiError("no API key: pass --team (local stack) or set AICLOUD_API_KEY", status=400)
    try:
        keys = json.loads(keys_file.read_text())
    except (OSError, ValueError):
        keys = {}
    if team not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise ApiError(f"no API key for team {team!r} in {keys_file} (teams there: {known})",
                       hint="set AICLOUD_API_KEY to your team's key", status=400)
    return str(keys[team])


class PlatformClient:
    """One CLI command = one trace: every request carries the same W3C ``traceparent``, so the
    trace id printed to the user finds the whole path (API, bus, services, workflow)."""

    def __init__(self, *, team: str | None, base_url: str | None = None) -> None:
        self.trace_id = secrets.token_hex(16)
        traceparent = f"00-{self.trace_id}-{secrets.token_hex(8)}-01"
        headers = {"Authorization": f"Bearer {api_key(team)}", "traceparent": traceparent}
        self._http = httpx.Client(base_url=base_url or api_url(), timeout=10, headers=headers)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiError(f"cannot reach the platform API at {self._http.base_url}",
                           hint="is it running? `aicloud dev status`") from None
        if response.status_code >= 400:
            raise ApiError(_explain(response), status=response.status_code)
        return response.json()


def _explain(response: httpx.Response) -> str:
    """The server's problem detail (RFC 9457), naming each invalid field."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: {response.text}"
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in item.get('loc', [])[1:]) or 'request'}: {item.get('msg')}"
            for item in errors
        )
        return f"{response.status_code}: {fields}"
    return f"{response.status_code}: {body.get('detail', body) if isinstance(body, dict) else body}"
