"""Team API keys, checked with the catalog (which owns them) and remembered for a while; used by
every service that authenticates callers but does not own the key table (agent runtime,
notebook proxy).

The runtime never sees the key table: it asks the catalog's ``/v1/whoami`` with the caller's
key and caches the answer by the key's digest, so a revoked key stops working within
``ttl_s`` and a busy sandbox costs the catalog one call per key per ``ttl_s``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import httpx
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

BEARER = HTTPBearer(auto_error=False, description="A team API key: `Authorization: Bearer ak_...`")


class CatalogKeys:
    def __init__(self, client: httpx.AsyncClient, *, ttl_s: float = 30.0,
                 negative_ttl_s: float = 2.0) -> None:
        self._client = client
        self._ttl, self._negative_ttl = ttl_s, negative_ttl_s
        self._cache: dict[str, tuple[str | None, float]] = {}

    async def team_for(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            response = await self._client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:
            raise HTTPException(503, detail=f"cannot check the API key: the catalog is unreachable ({exc})"
                                ) from None
        if response.status_code not in (200, 401):
            raise HTTPException(503, detail="cannot check the API key: the catalog answered"
                                f" {response.status_code}")
        team = response.json().get("team") if response.status_code == 200 else None
        self._cache[digest] = (team, time.monotonic() + (self._ttl if team else self._negative_ttl))
        if len(self._cache) > 10_000:
            self._cache.clear()
        return team

    async def aclose(self) -> None:
        await self._client.aclose()


def team_dependency(keys: CatalogKeys) -> Callable[..., Awaitable[str]]:
    async def team(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> str:
        """The caller's team, from its API key."""
        if credentials is None:
            raise HTTPException(401, detail="missing API key: send `Authorization: Bearer <key>`",
                                headers={"WWW-Authenticate": "Bearer"})
        found = await keys.team_for(credentials.credentials)
        if found is None:
            raise HTTPException(401, detail="invalid or revoked API key",
                                headers={"WWW-Authenticate": "Bearer"})
        return found

    return team
