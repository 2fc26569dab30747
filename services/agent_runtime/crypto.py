"""Envelope encryption for agent state: a data key per team, wrapped by a master key from settings.

Values are sealed with the team's data key (AES-256-GCM) and bound, through the associated
data, to the row they belong to, so a ciphertext moved to another row or team fails to open.
Data keys live in ``agent_data_keys`` only wrapped, beside the id of the master key that
wrapped them; rotating the master key re-wraps them and leaves every ciphertext untouched.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.kit.db import Migration

KEY_BYTES = 32
NONCE_BYTES = 12

DATA_KEYS_MIGRATION = Migration(20, "agent data keys, wrapped by a master key", (
    """CREATE TABLE agent_data_keys (
        team TEXT PRIMARY KEY,
        wrapped_key BYTEA NOT NULL,
        nonce BYTEA NOT NULL,
        master_key_id TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        rotated_at TIMESTAMPTZ)""",
))


class CryptoError(Exception):
    """Agent state could not be opened."""


class DecryptionError(CryptoError):
    """A ciphertext did not authenticate: wrong key, wrong row or tampered bytes."""


class UnknownMasterKey(CryptoError):
    """A data key is wrapped by a master key the keyring does not hold."""


@dataclass(frozen=True)
class Sealed:
    """A ciphertext (with its GCM tag) and the nonce it was sealed under."""

    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class WrappedKey:
    """A team's data key as stored: sealed by the master key ``key_id``."""

    key_id: str
    nonce: bytes
    ciphertext: bytes


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def row_aad(*parts: str) -> bytes:
    """The associated data naming a row. JSON, not a joined string, so that no choice of
    names (one containing '/', say) can make two different rows share an identity."""
    return json.dumps(parts, ensure_ascii=False, separators=(",", ":")).encode()


def seal(key: bytes, plaintext: bytes, *, aad: bytes) -> Sealed:
    nonce = os.urandom(NONCE_BYTES)
    return Sealed(nonce=nonce, ciphertext=AESGCM(key).encrypt(nonce, plaintext, aad))


def open_sealed(key: bytes, sealed: Sealed, *, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise DecryptionError("ciphertext did not authenticate: it was sealed under another key "
                              "or for another row, or it was altered") from None


class Keyring:
    """The master keys (id -> 32 bytes) and the id that new wraps use; old ids stay to unwrap."""

    def __init__(self, *, master_keys: Mapping[str, bytes], active: str) -> None:
        for key_id, key in master_keys.items():
            if len(key) != KEY_BYTES:
                raise ValueError(f"master key {key_id!r} is {len(key)} bytes; it must be {KEY_BYTES} "
                                 "(generate one with `openssl rand -base64 32`)")
        if active not in master_keys:
            raise ValueError(f"active master key {active!r} is not among the master keys "
                             f"({', '.join(sorted(master_keys)) or 'none'}): add it or pick one of those")
        self._keys = dict(master_keys)
        self.active = active

    @classmethod
    def from_settings(cls, *, master_keys_json: str, active: str) -> Keyring:
        return cls(master_keys=parse_master_keys(master_keys_json), active=active)

    def wrap(self, data_key: bytes, *, team: str) -> WrappedKey:
        sealed = seal(self._keys[self.active], data_key, aad=team.encode())
        return WrappedKey(key_id=self.active, nonce=sealed.nonce, ciphertext=sealed.ciphertext)

    def unwrap(self, wrapped: WrappedKey, *, team: str) -> bytes:
        master = self._keys.get(wrapped.key_id)
        if master is None:
            raise UnknownMasterKey(f"team {team!r}'s data key is wrapped by master key "
                                   f"{wrapped.key_id!r}, which the keyring does not hold: add it back "
                                   "to the master keys until rotation has re-wrapped every data key")
        return open_sealed(master, Sealed(wrapped.nonce, wrapped.ciphertext), aad=team.encode())

    def rewrap(self, wrapped: WrappedKey, *, team: str) -> WrappedKey:
        """The same data key, wrapped by the active master key."""
        return self.wrap(self.unwrap(wrapped, team=team), team=team)


def parse_master_keys(raw: str) -> dict[str, bytes]:
    """The settings form, ``{"k1": "<base64 of 32 bytes>", ...}``, as key id -> bytes."""
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"master keys are not JSON ({exc.msg}): give an object like "
                         '{"k1": "<base64 of 32 bytes>"}') from None
    if not isinstance(loaded, dict) or not loaded:
        raise ValueError('master keys must be a non-empty JSON object like {"k1": "<base64 of 32 bytes>"}')
    return {str(key_id): _decode_key(str(key_id), value) for key_id, value in loaded.items()}


def _decode_key(key_id: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"master key {key_id!r} must be a base64 string, not {type(value).__name__}")
    try:
        key = base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError(f"master key {key_id!r} is not valid base64: "
                         "generate one with `openssl rand -base64 32`") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"master key {key_id!r} decodes to {len(key)} bytes; it must be {KEY_BYTES} "
                         "(generate one with `openssl rand -base64 32`)")
    return key


async def team_data_key(session: AsyncSession, *, keyring: Keyring, team: str, create: bool = False) -> bytes:
    """The team's data key; with ``create``, made on the team's first write and wrapped by the
    active master key."""
    wrapped = await _wrapped_key(session, team=team)
    if wrapped is None and create:
        fresh = keyring.wrap(new_data_key(), team=team)
        # Two first writes may race: both insert, one wins, and both then use the winner's key.
        await session.execute(text(
            "INSERT INTO agent_data_keys (team, wrapped_key, nonce, master_key_id)"
            " VALUES (:team, :wk, :nonce, :kid) ON CONFLICT (team) DO NOTHING"),
            {"team": team, "wk": fresh.ciphertext, "nonce": fresh.nonce, "kid": fresh.key_id})
        wrapped = await _wrapped_key(session, team=team)
    if wrapped is None:
        raise CryptoError(f"team {team!r} has stored state but no data key: its agent_data_keys row "
                          "was deleted, and that state can no longer be decrypted")
    return keyring.unwrap(wrapped, team=team)


async def rotate_keys(session: AsyncSession, *, keyring: Keyring) -> int:
    """Re-wrap every data key not yet wrapped by the active master key; returns how many.
    No data row is touched: the data keys themselves stay the same."""
    rows = (await session.execute(text(
        "SELECT team, wrapped_key, nonce, master_key_id FROM agent_data_keys"
        " WHERE master_key_id <> :active ORDER BY team FOR UPDATE"), {"active": keyring.active})).all()
    for row in rows:
        wrapped = keyring.rewrap(WrappedKey(row.master_key_id, row.nonce, row.wrapped_key), team=row.team)
        await session.execute(text(
            "UPDATE agent_data_keys SET wrapped_key = :wk, nonce = :nonce, master_key_id = :kid,"
            " rotated_at = now() WHERE team = :team"),
            {"wk": wrapped.ciphertext, "nonce": wrapped.nonce, "kid": wrapped.key_id, "team": row.team})
    return len(rows)


async def _wrapped_key(session: AsyncSession, *, team: str) -> WrappedKey | None:
    row = (await session.execute(text(
        "SELECT master_key_id, nonce, wrapped_key FROM agent_data_keys WHERE team = :team"),
        {"team": team})).one_or_none()
    return None if row is None else WrappedKey(row.master_key_id, row.nonce, row.wrapped_key)
