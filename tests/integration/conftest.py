"""Fixtures shared by the integration tests (the router's live in router_fixtures.py)."""

from tests.integration.ray_fixtures import ray_cluster  # noqa: F401
from tests.integration.router_fixtures import make_router, upstream, usage  # noqa: F401
from tests.integration.sandbox_fixtures import make_runtime  # noqa: F401
