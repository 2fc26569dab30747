"""The engines a provisioner runs jobs on: the platform's (its configured backend) and, where
that is a cluster, the local one too, for products bound to it in ``policies/products.yaml``
(``engine: local``): small CPU jobs, say, on the provisioner's machine. Storage is shared (a
Ray backend keeps the local backend's workspace layout), so outputs, logs and lineage do not
depend on where a job ran."""

from __future__ import annotations

from collections.abc import Mapping

from contracts import JobRequested
from contracts.catalog import Product
from services.provisioner.backends.local import LocalBackend


class EngineUnavailable(RuntimeError):
    """The job's product is bound to an engine this platform does not run; retrying will not help."""


class Engines:
    def __init__(self, default: str, backends: Mapping[str, LocalBackend],
                 products: Mapping[str, Product]) -> None:
        if default not in backends:
            raise ValueError(f"no backend for the default engine {default!r}")
        self.default, self._backends = default, dict(backends)
        self._bound = {name: p.engine for name, p in products.items() if p.engine}

    @property
    def names(self) -> list[str]:
        return sorted(self._backends)

    def engine_of(self, request: JobRequested) -> str:
        return self._bound.get(request.product) or self.default

    def for_request(self, request: JobRequested) -> LocalBackend:
        engine = self.engine_of(request)
        backend = self._backends.get(engine)
        if backend is None:
            raise EngineUnavailable(
                f"product {request.product} runs on the {engine} engine (policies/products.yaml), "
                f"but this platform runs {', '.join(self.names)}: choose another product, or ask "
                "the platform team to bind it to an engine it runs")
        return backend
