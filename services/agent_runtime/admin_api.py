"""The platform engineer's routes: re-wrap every team's state data key with the active master key."""

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException

from services.agent_runtime.crypto import Keyring, rotate_keys
from services.kit.db import Database


def build_router(*, db: Database, keyring: Keyring, admin_token: str) -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"])

    def admin(authorization: Annotated[str, Header()] = "") -> None:
        given = authorization.removeprefix("Bearer ").strip()
        if not admin_token or not secrets.compare_digest(given.encode(), admin_token.encode()):
            raise HTTPException(401, detail="this needs 'Authorization: Bearer <admin token>' "
                                "(AICLOUD_AGENT_RUNTIME_ADMIN_TOKEN)")

    @router.post("/state/rotate-keys", dependencies=[Depends(admin)])
    async def rotate() -> dict[str, Any]:
        """Re-wrap each team's data key with the active master key; no data is re-encrypted.
        Keep the old master key configured until this has answered."""
        async with db.transaction() as session:
            count = await rotate_keys(session, keyring=keyring)
        return {"rewrapped": count, "active_key": keyring.active}

    return router
