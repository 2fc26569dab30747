"""Envelope encryption for agent state: sealing bound to a row, wrapping bound to a team, rotation."""

from __future__ import annotations

import base64
import json
import os

import pytest

from services.agent_runtime.crypto import (
    DecryptionError,
    Keyring,
    Sealed,
    UnknownMasterKey,
    new_data_key,
    open_sealed,
    parse_master_keys,
    row_aad,
    seal,
)

K1, K2 = os.urandom(32), os.urandom(32)


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_a_sealed_value_opens_with_its_key_and_row_and_hides_the_plaintext() -> None:
    key = new_data_key()
    aad = row_aad("legal", "drafter", "memory", "plan")
    sealed = seal(key, b"the-secret-plan-42", aad=aad)
    assert len(key) == 32 and len(sealed.nonce) == 12
    assert b"the-secret-plan-42" not in sealed.ciphertext
    assert len(sealed.ciphertext) == len(b"the-secret-plan-42") + 16  # the GCM tag
    assert open_sealed(key, sealed, aad=aad) == b"the-secret-plan-42"


def test_every_seal_uses_a_fresh_nonce() -> None:
    key, aad = new_data_key(), row_aad("legal", "a", "memory", "k")
    first, second = seal(key, b"same", aad=aad), seal(key, b"same", aad=aad)
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext


@pytest.mark.parametrize("other_row", [
    ("legal", "drafter", "memory", "other-key"),
    ("finance", "drafter", "memory", "plan"),
    ("legal", "reviewer", "memory", "plan"),
    ("legal", "drafter", "checkpoint", "plan"),
])
def test_a_ciphertext_moved_to_another_row_or_team_does_not_open(other_row: tuple[str, ...]) -> None:
    key = new_data_key()
    sealed = seal(key, b"value", aad=row_aad("legal", "drafter", "memory", "plan"))
    with pytest.raises(DecryptionError, match="did not authenticate"):
        open_sealed(key, sealed, aad=row_aad(*other_row))


def test_row_identities_cannot_collide_through_separators() -> None:
    assert row_aad("a/b", "c") != row_aad("a", "b/c")


def test_a_tampered_ciphertext_or_another_key_does_not_open() -> None:
    key, aad = new_data_key(), row_aad("legal", "a", "memory", "k")
    sealed = seal(key, b"value", aad=aad)
    flipped = bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    with pytest.raises(DecryptionError):
        open_sealed(key, Sealed(sealed.nonce, flipped), aad=aad)
    with pytest.raises(DecryptionError):
        open_sealed(new_data_key(), sealed, aad=aad)


def test_a_wrapped_data_key_unwraps_only_for_its_team_and_master_key() -> None:
    keyring = Keyring(master_keys={"k1": K1}, active="k1")
    data_key = new_data_key()
    wrapped = keyring.wrap(data_key, team="legal")
    assert wrapped.key_id == "k1" and data_key not in wrapped.ciphertext
    assert keyring.unwrap(wrapped, team="legal") == data_key
    with pytest.raises(DecryptionError):
        keyring.unwrap(wrapped, team="finance")
    impostor = Keyring(master_keys={"k1": os.urandom(32)}, active="k1")
    with pytest.raises(DecryptionError):
        impostor.unwrap(wrapped, team="legal")


def test_unwrapping_with_a_master_key_the_keyring_lacks_names_it() -> None:
    wrapped = Keyring(master_keys={"k1": K1}, active="k1").wrap(new_data_key(), team="legal")
    with pytest.raises(UnknownMasterKey, match=r"master key 'k1'.*add it back"):
        Keyring(master_keys={"k2": K2}, active="k2").unwrap(wrapped, team="legal")


def test_rotation_rewraps_the_same_data_key_under_the_active_master_key() -> None:
    data_key = new_data_key()
    old = Keyring(master_keys={"k1": K1}, active="k1").wrap(data_key, team="legal")
    rotated = Keyring(master_keys={"k1": K1, "k2": K2}, active="k2").rewrap(old, team="legal")
    assert rotated.key_id == "k2" and rotated.ciphertext != old.ciphertext
    assert Keyring(master_keys={"k2": K2}, active="k2").unwrap(rotated, team="legal") == data_key


def test_master_keys_parse_from_the_settings_form() -> None:
    keyring = Keyring.from_settings(master_keys_json=json.dumps({"k1": b64(K1), "k2": b64(K2)}),
                                    active="k2")
    assert keyring.active == "k2"
    assert parse_master_keys(json.dumps({"k1": b64(K1)})) == {"k1": K1}


@pytest.mark.parametrize(("raw", "message"), [
    ("not json", "not JSON"),
    ("[]", "non-empty JSON object"),
    ("{}", "non-empty JSON object"),
    ('{"k1": 5}', "'k1' must be a base64 string"),
    ('{"k1": "***"}', "'k1' is not valid base64.*openssl rand -base64 32"),
    (json.dumps({"k1": b64(os.urandom(16))}), "'k1' decodes to 16 bytes; it must be 32"),
])
def test_bad_master_keys_are_refused_naming_the_problem(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_master_keys(raw)


def test_the_active_master_key_must_be_one_of_the_master_keys() -> None:
    with pytest.raises(ValueError, match=r"active master key 'k9' is not among the master keys \(k1\)"):
        Keyring.from_settings(master_keys_json=json.dumps({"k1": b64(K1)}), active="k9")
    with pytest.raises(ValueError, match="'short' is 3 bytes"):
        Keyring(master_keys={"short": b"abc"}, active="short")
