"""Local jobs are contained: each isolation this machine has is tried for real.

CI installs runsc and bubblewrap (.ci/run); where one is missing its cases skip, saying so.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts import JobRequested
from services.kit.sandbox import Isolation, available
from services.provisioner.backends.local import LocalBackend

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SANDBOXED = [Isolation.GVISOR, Isolation.BUBBLEWRAP]


def backend_for(isolation: Isolation, tmp_path: Path, hidden: list[Path] | None = None) -> LocalBackend:
    if isolation not in available():
        pytest.skip(f"{isolation} is not installed here (apt-get install runsc bubblewrap)")
    return LocalBackend(work_dir=tmp_path / "jobs", memory_limit_mb=512, hidden=hidden,
                        dataset_root=ROOT / "examples" / "datasets", isolation=isolation.value)


async def run(backend: LocalBackend, script: str, *, dataset: str | None = None,
              job_id: str = "probe", egress: bool = False) -> tuple[int, str]:
    request = JobRequested(tenant="legal", job_id=job_id, command=["python3", "-c", script],
                           dataset=dataset)
    job = await backend.start(request, egress=egress)
    async with asyncio.timeout(60):
        while (code := await job.wait()) is None:
            pass
    await backend.teardown(request)
    return code, (backend.workspace(request) / "job.log").read_text()


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP server on the host's loopback that a contained job must not reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_no_network_read_only_root_and_dataset(isolation: Isolation, tmp_path: Path,
                                                     listener: int) -> None:
    backend = backend_for(isolation, tmp_path)
    script = f"""
import os, socket
print('dataset', sorted(os.listdir(os.environ['AICLOUD_DATASET_DIR'])))
open(os.environ['AICLOUD_OUTPUT_DIR'] + '/ok.txt', 'w').write('written')
for name, action in [
    ('connect', lambda: socket.create_connection(('127.0.0.1', {listener}), timeout=2)),
    ('write-root', lambda: open('/etc/aicloud-escape', 'w')),
    ('write-repo', lambda: open({str(ROOT / 'escape.txt')!r}, 'w')),
    ('write-dataset', lambda: open(os.environ['AICLOUD_DATASET_DIR'] + '/x', 'w')),
]:
    try:
        action()
        print(name, 'ALLOWED')
    except OSError as exc:
        print(name, 'blocked', type(exc).__name__)
"""
    code, log = await run(backend, script, dataset="projects/legal-rag/datasets/v2")
    assert code == 0, log
    assert "dataset ['clauses.csv']" in log
    for name in ("connect", "write-root", "write-dataset"):
        assert f"{name} blocked" in log, log
    # The checkout is read-only in the sandbox. One under /tmp is not there at all (the sandbox's
    # /tmp is its own), so a write to it lands in that private /tmp: the host check below holds.
    if not ROOT.resolve().is_relative_to("/tmp"):
        assert "write-repo blocked" in log, log
    assert (tmp_path / "jobs" / "legal" / "probe" / "output" / "ok.txt").read_text() == "written"
    assert not (ROOT / "escape.txt").exists() and not Path("/etc/aicloud-escape").exists()


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_a_product_that_allows_egress_gets_the_network_and_nothing_else(
        isolation: Isolation, tmp_path: Path, listener: int) -> None:
    backend = backend_for(isolation, tmp_path)
    script = f"""
import socket
socket.create_connection(('127.0.0.1', {listener}), timeout=5).close()
print('connected')
try:
    open('/etc/probe', 'w')
    print('root writable')
except OSError:
    print('root read-only')
"""
    code, log = await run(backend, script, job_id="egress", egress=True)
    assert code == 0, log
    assert "connected" in log and "root read-only" in log  # the network, not a weaker sandbox


@pytest.mark.parametrize("isolation", [*SANDBOXED, Isolation.RLIMITS])
async def test_memory_hog_is_stopped_by_its_limit(isolation: Isolation, tmp_path: Path) -> None:
    backend = backend_for(isolation, tmp_path)
    code, log = await run(backend, "x = bytearray(700 * 1024 * 1024)\nprint('allocated')")
    assert code != 0 and "MemoryError" in log and "allocated" not in log


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_stop_gives_the_job_its_sigterm_and_leaves_nothing(isolation: Isolation,
                                                                 tmp_path: Path) -> None:
    backend = backend_for(isolation, tmp_path)
    script = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('checkpointed', flush=True), sys.exit(0)))\n"
              "print('up', flush=True)\ntime.sleep(300)")
    request = JobRequested(tenant="legal", job_id="stopme", command=["python3", "-c", script])
    job = await backend.start(request)
    log = backend.workspace(request) / "job.log"
    async with asyncio.timeout(30):
        while "up" not in (log.read_text() if log.exists() else ""):
            await asyncio.sleep(0.05)
    assert await job.stop(grace_period_s=5) == 0
    await backend.teardown(request)
    assert "checkpointed" in log.read_text()
    if isolation is Isolation.GVISOR:
        listed = subprocess.run(["runsc", "--root", str(tmp_path / "sandbox"), "list"],
                                capture_output=True, text=True, check=True).stdout
        assert "aicloud-legal-stopme" not in listed


@pytest.mark.parametrize("isolation", SANDBOXED)
async def test_platform_state_is_invisible_and_code_anywhere_runs(isolation: Isolation,
                                                                  tmp_path: Path) -> None:
    # A home outside /tmp (which is private anyway), holding keys and another team's work.
    home = ROOT / ".aicloud-sandbox-test"
    (home / "jobs" / "research" / "secret-job").mkdir(parents=True, exist_ok=True)
    (home / "keys.json").write_text('{"research": "ak_secret"}')
    (home / "jobs" / "research" / "secret-job" / "data.txt").write_text("private")
    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(f"""
import os
for path in [{str(home / 'keys.json')!r}, {str(home / 'jobs/research/secret-job/data.txt')!r}]:
    try:
        print('READ', open(path).read())
    except OSError as exc:
        print('hidden', type(exc).__name__)
print('own workspace', os.listdir(os.environ['HOME']))
""")
    try:
        backend = LocalBackend(work_dir=home / "jobs", memory_limit_mb=512, hidden=[home],
                               isolation=isolation.value) if isolation in available() else \
            backend_for(isolation, tmp_path)
        request = JobRequested(tenant="legal", job_id="snoop",
                               command=["python3", str(code / "probe.py")])
        job = await backend.start(request)
        async with asyncio.timeout(60):
            while (exit_code := await job.wait()) is None:
                pass
        await backend.teardown(request)
        log = (backend.workspace(request) / "job.log").read_text()
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    assert exit_code == 0, log
    assert "READ" not in log and log.count("hidden FileNotFoundError") == 2, log
    assert "own workspace" in log
