"""The provisioner's composition root: every port its handlers and activities use, built once
from settings (cosmicpython's ``bootstrap``). Nothing here connects or starts: ``lifecycle``
does that when the service starts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from contracts.catalog import CatalogDataError, load_products
from services.kit.bus import Bus
from services.kit.catalog_keys import CatalogKeys
from services.kit.settings import ConfigError
from services.kit.temporal import Temporal
from services.provisioner.backends.engines import Engines
from services.provisioner.backends.local import LocalBackend
from services.provisioner.backends.ray import RayBackend, ray_jobs_client
from services.provisioner.endpoints.activities import EndpointActivities
from services.provisioner.endpoints.canary import CanaryBook
from services.provisioner.endpoints.fleet import Fleet
from services.provisioner.jobs.activities import JobActivities
from services.provisioner.notebooks.activities import NotebookActivities
from services.provisioner.notebooks.jupyter import Notebook
from services.provisioner.notebooks.proxy import NotebookProxy
from services.provisioner.publish import Publisher
from services.provisioner.settings import ProvisionerSettings
from workflows.endpoint_model import Tuning


@dataclass
class Ports:
    """What the provisioner runs with: the bus, Temporal, the compute backend, and the state of
    what this process started (replicas, notebooks, canary numbers)."""

    settings: ProvisionerSettings
    bus: Bus
    temporal: Temporal
    backend: LocalBackend
    engines: Engines
    keys: CatalogKeys
    proxy: NotebookProxy
    tuning: Tuning
    fleet: Fleet = field(default_factory=Fleet)
    book: CanaryBook = field(default_factory=CanaryBook)
    notebooks: dict[str, Notebook] = field(default_factory=dict)

    def activities(self) -> list[Callable[..., Awaitable[Any]]]:
        """Every activity the provisioner's workflows call, for its one worker."""
        s, sandbox = self.settings, self.backend.sandbox
        jobs = JobActivities(bus=self.bus, backend=self.backend, tracking_uri=s.mlflow_tracking_uri,
                             engines=self.engines)
        endpoints = EndpointActivities(
            bus=self.bus, sandbox=sandbox, serving_root=s.serving_root,
            artifact_root=self.backend.artifact_root, hf_mirror=s.hf_mirror, book=self.book,
            fleet=self.fleet)
        notebooks = NotebookActivities(
            bus=self.bus, sandbox=sandbox, root=s.notebook_root, volumes=s.volume_root.resolve(),
            proxy=self.proxy, notebooks=self.notebooks)
        return [*jobs.all(), *endpoints.all(), *notebooks.all(), *Publisher(bus=self.bus).all()]


def compute_backend(settings: ProvisionerSettings) -> LocalBackend:
    storage: dict[str, Any] = dict(
        work_dir=Path(settings.work_dir).resolve(), memory_limit_mb=settings.memory_limit_mb,
        dataset_root=settings.dataset_root, artifact_root=settings.artifact_root,
        isolation=settings.isolation,
        # jobs must not see other workloads' sockets (a model server, an unauthenticated
        # Jupyter) or files (running notebooks, the teams' volumes)
        hidden=[*settings.sandbox_hidden_paths, settings.serving_root, settings.notebook_root,
                settings.volume_root],
    )
    if settings.backend == "ray":
        return RayBackend(api=lambda: ray_jobs_client(settings.ray_address), address=settings.ray_address,
                          placement_timeout_s=settings.placement_timeout_s, **storage)
    return LocalBackend(**storage)


def engines(settings: ProvisionerSettings, backend: LocalBackend) -> Engines:
    """The platform's engine, and the local one for products bound to it."""
    try:
        products = load_products(settings.policy_dir / "products.yaml")
    except CatalogDataError as exc:
        raise ConfigError(f"provisioner cannot load the products: {exc}") from None
    backends = {settings.backend: backend}
    if settings.backend != "local":
        backends["local"] = compute_backend(settings.model_copy(update={"backend": "local"}))
    return Engines(settings.backend, backends, products)


def bootstrap(settings: ProvisionerSettings, *, bus: Bus) -> Ports:
    backend = compute_backend(settings)
    catalog = httpx.AsyncClient(base_url=settings.catalog_url or "http://catalog.invalid", timeout=5)
    keys = CatalogKeys(catalog)
    return Ports(
        settings=settings, bus=bus, backend=backend, engines=engines(settings, backend), keys=keys,
        temporal=Temporal(settings.temporal_address, settings.temporal_namespace),
        proxy=NotebookProxy(settings.notebook_proxy_host, settings.notebook_proxy_port,
                            authenticate=keys.team_for),
        tuning=Tuning(canary_window_s=settings.canary_window_s,
                      canary_min_requests=settings.canary_min_requests),
    )
