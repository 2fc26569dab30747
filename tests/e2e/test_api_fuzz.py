"""Schemathesis over every HTTP API the local stack serves, with the keys a team really holds: no
server error, and every answer one its OpenAPI document declares (status, content type, body).

Not fuzzed, for want of an OpenAPI document: the notebook proxy and the endpoints' model servers
(aiohttp; the model servers are reached through the router's /v1/predict and /v1/embeddings).
Quota serves only the kit's /healthz, /readyz and /metrics, which every API here serves too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.test_local_stack import aicloud, processes_under

pytestmark = pytest.mark.e2e

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance"
MAX_EXAMPLES = 25  # per operation: the file takes about a minute on two cores
Key = Callable[[Path], str]


def team_key(file: str) -> Key:
    return lambda home: json.loads((home / file).read_text())["legal"]


def token(name: str) -> Key:
    return lambda home: (home / "run" / name).read_text().strip()


@dataclass(frozen=True)
class Api:
    component: str
    operations: int
    """Fuzzed: all in its OpenAPI document but /readyz, whose 503 under a loaded CI machine's
    2-second checks would be the machine's, not the API's (test_local_stack reads it)."""
    key: Key
    """The bearer every request carries: a real team key, or the admin token of an admin API."""
    admin: dict[str, Key] = field(default_factory=dict)
    """Operations that take another bearer than ``key``."""
    passes_on: tuple[int, ...] = ()
    """5xx statuses that are the answer, not a fault: the router's 502 and 503 when a model's
    upstream fails (policies/routes.yaml's broken-gpt always does, for the SLO alerts' demo)."""


# Lighter APIs first: the notebooks, jobs and sandboxes that the agent runtime's and the catalog's
# fuzzing starts leave a load that would slow whatever came after them.
APIS = [
    Api("inference-router", 5, team_key("router-keys.json"), passes_on=(502, 503)),
    Api("cost-ledger", 7, token("ledger-admin-token")),
    Api("observability-collector", 6, token("alertmanager-webhook-token")),
    Api("provisioner", 5, lambda home: "none"),  # internal: no credential
    Api("agent-runtime", 25, team_key("keys.json"),
        admin={"/admin/state/rotate-keys": token("agent-runtime-admin-token")}),
    Api("catalog", 24, team_key("keys.json")),
]


def config(home: Path, api: Api) -> str:
    """schemathesis.toml: the bearers, per operation where it differs, and the 5xx that pass."""
    def bearer(key: Key) -> str:
        return f"headers = {{ Authorization = {json.dumps('Bearer ' + key(home))} }}"

    lines = [bearer(api.key)]
    if api.passes_on:
        statuses = ["2XX", "3XX", "4XX", *map(str, api.passes_on)]
        lines += ["[checks.not_a_server_error]", f"expected-statuses = {json.dumps(statuses)}"]
    for path, key in api.admin.items():
        lines += ["[[operations]]", f"include-path = {json.dumps(path)}", bearer(key)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    home = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as env:
        # The notebooks, jobs and sandboxes the fuzzing starts run as rlimited processes: in gVisor
        # their start-ups made this file three times as slow on two cores, and what is under test
        # here is the HTTP APIs, not the isolation (the sandbox tests and test_local_stack's is).
        env.setenv("AICLOUD_PROVISIONER_ISOLATION", "rlimits")
        env.setenv("AICLOUD_AGENT_RUNTIME_ISOLATION", "rlimits")
        result = aicloud(home, "dev", "up", "--detach", "--free-ports")
    assert result.returncode == 0, result.stdout + result.stderr
    status = aicloud(home, "dev", "status", "--json")
    yield home, {row["name"]: str(row["url"]) for row in json.loads(status.stdout)}
    aicloud(home, "dev", "down")
    for proc in processes_under(home):
        proc.kill()


@pytest.mark.parametrize("api", APIS, ids=[api.component for api in APIS])
def test_fuzzing_the_openapi_document_finds_no_server_error_and_no_undeclared_answer(
        stack: tuple[Path, dict[str, str]], api: Api, tmp_path: Path) -> None:
    home, urls = stack
    (tmp_path / "schemathesis.toml").write_text(config(home, api))
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(tmp_path / "schemathesis.toml"),
         "run", f"{urls[api.component]}/openapi.json", "--checks", CHECKS,
         "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic",
         "--suppress-health-check", "all", "--exclude-path", "/readyz", "--request-timeout", "30"],
        capture_output=True, text=True, cwd=tmp_path, timeout=150, check=False)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-6000:]
    # so that it cannot pass by testing nothing (a filter or a document that lost its paths)
    assert f"Selected: {api.operations}/" in report and f"Tested: {api.operations}\n" in report, report
