"""Platform data every service may read: compute products and the organisation.

Kept as YAML beside the policies (``policies/products.yaml``, ``policies/org.yaml``): the
catalog lists and validates against them, quota evaluates policies with them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATASET_PATH = re.compile(
    r"^projects/(?P<project>[a-z0-9][a-z0-9-]*)/datasets/(?P<name>[a-z0-9][a-z0-9._-]*)$"
)


class CatalogDataError(ValueError):
    """A products or org file is unusable; the message names the file and the field."""


class Product(BaseModel):
    """A compute product developers choose from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    workload: Literal["job", "notebook", "endpoint"]
    gpu_types: tuple[str, ...] = ()
    min_gpus: int = Field(default=0, ge=0)
    max_gpus: int = Field(default=0, ge=0)
    max_runtime_s: int = Field(gt=0)
    idle_shutdown_s: int | None = Field(default=None, gt=0)
    network: Literal["none", "egress"] = "none"
    price_class: Literal["on-demand", "spot"] = "on-demand"
    engine: Literal["local", "ray", "kubernetes"] | None = Field(
        default=None,
        description="The compute engine its jobs run on; unset: the platform's (the provisioner's "
                    "backend). local: sandboxed processes on the provisioner's machine, also "
                    "where jobs otherwise go to a cluster.")
    max_per_team: int | None = Field(
        default=None, ge=1,
        description="Notebooks and endpoints: at most this many of the product's live at once per "
                    "team (GPUs or not); unset: only GPU quota limits them.")
    hourly_usd: float = Field(
        default=0.0, ge=0,
        description="Estimate per GPU-hour (per job-hour without GPUs) for budget pre-authorisation.",
    )

    def estimate_usd(self, *, gpus: int, runtime_s: int) -> float:
        """The most a job of this product can cost: its whole runtime at this price."""
        return round(self.hourly_usd * max(gpus, 1) * runtime_s / 3600, 2)

    @model_validator(mode="after")
    def _gpu_range(self) -> Product:
        if self.max_gpus < self.min_gpus:
            raise ValueError(f"max_gpus ({self.max_gpus}) is below min_gpus ({self.min_gpus})")
        if self.max_gpus > 0 and not self.gpu_types:
            raise ValueError("a product with GPUs must list its gpu_types")
        if self.engine is not None and self.workload != "job":
            raise ValueError(f"only jobs are bound to an engine: a {self.workload} runs on the "
                             "provisioner's machine; remove its engine")
        return self


class Team(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    projects: tuple[str, ...] = ()


class Project(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    datasets: tuple[str, ...] = ()


class Org(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    teams: tuple[Team, ...]
    projects: tuple[Project, ...] = ()

    def team(self, name: str) -> Team | None:
        return next((t for t in self.teams if t.name == name), None)


def dataset_project(path: str) -> str | None:
    """The project a dataset path belongs to, or None when the path is not a dataset path."""
    match = DATASET_PATH.match(path)
    return match["project"] if match and ".." not in path else None


IMAGE_DIGEST = re.compile(r"^[^@\s]+@(?P<digest>sha256:[0-9a-f]{64})$")


class ImageAttestation(BaseModel):
    """A scanner's verdict on one image digest (``policies/image-attestations.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    verdict: Literal["passed", "failed"]
    scanner: str = Field(min_length=1, description="What scanned it, e.g. trivy 0.58.")
    scanned_at: str = Field(min_length=1, description="When, ISO 8601.")
    image: str = Field(default="", description="The image's name, for people reading the file.")


def image_digest(image: str) -> str | None:
    """``sha256:...`` when ``image`` is pinned by digest (``name@sha256:<64 hex>``), else None."""
    match = IMAGE_DIGEST.match(image)
    return match["digest"] if match else None


def load_attestations(path: Path) -> dict[str, ImageAttestation]:
    """Scan verdicts by digest; none when the file does not exist."""
    if not path.exists():
        return {}
    raw = _read(path)
    try:
        entries: Any = raw.get("attestations") or []
        found = [ImageAttestation(**spec) for spec in entries]
    except (ValidationError, TypeError) as exc:
        raise CatalogDataError(f"{path}: {exc}") from None
    return {a.digest: a for a in found}


def load_products(path: Path) -> dict[str, Product]:
    raw = _read(path)
    try:
        products = [Product(name=name, **spec) for name, spec in (raw.get("products") or {}).items()]
    except (ValidationError, TypeError) as exc:
        raise CatalogDataError(f"{path}: {exc}") from None
    return {p.name: p for p in products}


def load_org(path: Path) -> Org:
    raw = _read(path)
    try:
        return Org(
            teams=tuple(Team(name=n, **(s or {})) for n, s in (raw.get("teams") or {}).items()),
            projects=tuple(Project(name=n, **(s or {})) for n, s in (raw.get("projects") or {}).items()),
        )
    except (ValidationError, TypeError) as exc:
        raise CatalogDataError(f"{path}: {exc}") from None


def _read(path: Path) -> dict[str, dict[str, dict[str, object]]]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogDataError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise CatalogDataError(f"{path}: expected a mapping at the top level")
    return data
