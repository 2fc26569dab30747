"""The local stack's bus identities: a NATS user per service with the permissions generated
from the contracts (``contracts.permissions``), ``publisher`` for systems outside the platform
and ``ops`` (every right) for the CLI and the tools that read the bus directly.

Each password is random, made once per home and kept under ``run/`` (0600), as the other
secrets are; the NATS configuration holding them (in plain text: nats-server reads it, and no
bcrypt is at hand) is 0600 too. A service gets its own as ``AICLOUD_<SERVICE>_NATS_USER`` and
``_NATS_PASSWORD``.
"""

from __future__ import annotations

import json
from pathlib import Path

from aicloud.local.state import StackFiles, write_private
from contracts.permissions import OPS, grants

CONFIG = "nats-auth.conf"


def password_file(home: Path, identity: str) -> Path:
    return home / "run" / f"nats-password-{identity}"


def password(files: StackFiles, identity: str) -> str:
    """``identity``'s password on this home's bus, made the first time it is asked for."""
    return files.secret(password_file(files.home, identity).name)


def write_config(files: StackFiles) -> Path:
    """The nats-server configuration with every identity (JSON, which nats-server reads);
    written afresh each start, so a password removed from ``run/`` is a new one after ``up``."""
    users = [{"user": name, "password": password(files, name), "permissions": grant.as_nats()}
             for name, grant in grants().items()]
    path = files.home / "run" / CONFIG
    write_private(path, json.dumps({"authorization": {"users": users}}, indent=2))
    return path


def ops_login(home: Path) -> dict[str, str]:
    """``user`` and ``password`` for ``nats.connect`` as ``ops`` on the stack of ``home``;
    empty for a home whose stack runs without identities (made before they existed)."""
    path = password_file(home, OPS)
    if not path.exists():
        return {}
    return {"user": OPS, "password": path.read_text().strip()}
