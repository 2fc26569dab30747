"""The backup archive: one tar.gz holding ``manifest.json`` and the parts it lists, each with
its size and sha256, so a restore knows before it starts anything that the archive is whole."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

FORMAT = "aicloud-backup"
VERSION = 1
MANIFEST = "manifest.json"


class ArchiveError(RuntimeError):
    """The archive is not one this version can restore, or it is damaged; the message says how."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def parts(staging: Path) -> list[dict[str, Any]]:
    """Every file under ``staging`` as a part: its path there, kind (its top folder), size, sha256."""
    found = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    return [{"path": str(p.relative_to(staging)), "kind": p.relative_to(staging).parts[0].split(".")[0],
             "bytes": p.stat().st_size, "sha256": sha256(p)} for p in found]


def pack(staging: Path, manifest: dict[str, Any], target: Path) -> int:
    """Write ``target`` (0600: it holds the platform's data and keys) from ``staging``, the
    manifest first; replaced in one step, so a failed backup never leaves half an archive."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    partial = target.with_name(f".{target.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w:gz", compresslevel=3) as tar:
        tar.add(staging / MANIFEST, arcname=MANIFEST)
        for part in manifest["parts"]:
            tar.add(staging / part["path"], arcname=part["path"])
    partial.replace(target)
    return target.stat().st_size


def unpack(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract ``archive`` into ``staging`` and check it against its manifest."""
    if not archive.is_file():
        raise ArchiveError(f"no backup archive at {archive}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(staging, filter="data")  # no absolute paths, links out or devices
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive} is not a readable backup archive: {exc}") from None
    return verify(staging)


def verify(staging: Path) -> dict[str, Any]:
    """The manifest, once every part it lists is there with its size and sha256."""
    try:
        manifest: dict[str, Any] = json.loads((staging / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"the archive has no readable {MANIFEST}: {exc}") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ArchiveError(f"not an {FORMAT} archive of version {VERSION} "
                           f"(it says {manifest.get('format')!r} version {manifest.get('version')!r})")
    for part in manifest["parts"]:
        path = staging / part["path"]
        if not path.is_file():
            raise ArchiveError(f"part {part['path']} is missing from the archive")
        if path.stat().st_size != part["bytes"] or sha256(path) != part["sha256"]:
            raise ArchiveError(f"part {part['path']} is damaged (size or sha256 differs from the manifest)")
    return manifest


def copy_files(source: Path, target: Path) -> None:
    """``source`` (a file or a folder) to ``target``: regular files only, no links or sockets."""
    if source.is_file() and not source.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # a live folder: a file may go meanwhile
            shutil.copy2(source, target)
        return
    for path in sorted(source.rglob("*")) if source.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            copy_files(path, target / path.relative_to(source))
