"""One real Ray cluster (a head and two worker nodes with simulated GPUs of two types) for the
integration tests of the session, started only when a test asks for it and stopped when they end
(package scope): its idle head and nodes would otherwise take CPU from the unit tests that follow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aicloud.local.ray_cluster import RayCluster


@pytest.fixture(scope="package")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    cluster = RayCluster(root=tmp_path_factory.mktemp("ray"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
