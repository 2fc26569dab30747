"""The model-server replicas this provisioner process runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.provisioner.endpoints.serving.replica import Replica


@dataclass
class Fleet:
    """The model-server replicas this provisioner process runs: replica id -> (endpoint, replica)."""

    replicas: dict[str, tuple[str, Replica]] = field(default_factory=dict)

    def of(self, endpoint: str) -> list[Replica]:
        return [r for e, r in self.replicas.values() if e == endpoint]

    def endpoints(self) -> set[str]:
        return {e for e, _ in self.replicas.values()}
