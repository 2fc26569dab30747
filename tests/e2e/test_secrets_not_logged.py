"""No secret reaches a log: a stack with planted secrets walks the golden path, then every log and
trace file it wrote is searched for each secret's value.

The secrets: the model-provider key (OPENAI_API_KEY and ANTHROPIC_API_KEY of the router; with the
fake upstream that is the home's ``run/fake-llm-key``, planted here before ``up`` with a
distinctive value), the teams' API keys (keys.json), their router keys (router-keys.json) and one
made during the walk, the admin and webhook tokens, the NATS passwords and the agent-state master
key (all under ``run/``), and the wrong keys the walk presents. The local PostgreSQL's password is
planted too (``run/postgres-password``, which ``up`` makes when missing; every connection must
give it), found again in each service's database URL and searched for as such.

Searched: every file under ``logs/``, every ``*.log`` and ``*.jsonl`` anywhere under the home (the
traces, the jobs' logs and metrics) and in the home's scratch folders (endpoints, notebooks,
sandboxes), after ``dev down`` so that shutdown lines are in.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import psutil
import pytest

from aicloud.local.state import StackFiles

pytestmark = pytest.mark.e2e

PROVIDER_KEY = f"sk-planted-provider-{secrets.token_hex(12)}"
DATABASE_PASSWORD = f"pg-planted-{secrets.token_hex(12)}"
WRONG_API_KEY = f"ak_00000000_wrong{secrets.token_urlsafe(16)}"
WRONG_ROUTER_KEY = f"vk_00000000_wrong{secrets.token_urlsafe(16)}"
WRONG_ADMIN_TOKEN = f"wrong-admin-{secrets.token_urlsafe(16)}"
NOT_SECRETS = {"stack.json", "ports.json", "nats-auth.conf"}  # run/ files that only hold or point at them
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
# every service at its most talkative: debug lines are where a header or a URL slips out
DEBUG = {f"AICLOUD_{service.upper().replace('-', '_')}_LOG_LEVEL": "debug" for service in (
    "catalog", "quota", "provisioner", "cost-ledger", "inference-router", "agent-runtime",
    "observability-collector")}
MESSAGES = {"model": "claude-haiku", "max_tokens": 16, **CHAT}  # Anthropic's wire format


@dataclass
class Walk:
    home: Path
    made: dict[str, str] = field(default_factory=dict)
    """Secrets the walk itself made or presented, by name."""
    answers: dict[str, int | str] = field(default_factory=dict)
    """HTTP status or CLI exit code of each step, by name."""
    router_key_id: str = ""


def aicloud(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aicloud", *args], capture_output=True, text=True,
                          timeout=120, check=False,
                          env={**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_TEAM": "legal", **env})


def _kill_leftovers(home: Path) -> None:
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(home) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _router_calls(walk: Walk, router: str, key: str) -> None:
    """The data plane: both wire formats, streaming, an upstream failure, embeddings, bad keys."""
    bearer = {"authorization": f"Bearer {key}"}
    calls = {
        "chat": ("/v1/chat/completions", bearer, {"model": "gpt-4o-mini", **CHAT}),
        "stream": ("/v1/chat/completions", bearer, {"model": "gpt-4o-mini", "stream": True, **CHAT}),
        "upstream-500": ("/v1/chat/completions", bearer, {"model": "broken-gpt", **CHAT}),
        "anthropic": ("/v1/messages", {"x-api-key": key}, MESSAGES),
        "embeddings": ("/v1/embeddings", bearer, {"model": "text-embedding-3-small", "input": "hi"}),
        "wrong-bearer": ("/v1/chat/completions", {"authorization": f"Bearer {WRONG_ROUTER_KEY}"},
                         {"model": "gpt-4o-mini", **CHAT}),
        "wrong-x-api-key": ("/v1/messages", {"x-api-key": WRONG_ROUTER_KEY}, MESSAGES),
    }
    with httpx.Client(base_url=router, timeout=30) as client:
        for name, (path, headers, body) in calls.items():
            walk.answers[name] = client.post(path, headers=headers, json=body).status_code


def _golden_path(walk: Walk, router: str) -> None:
    home, answers = walk.home, walk.answers
    answers["job"] = aicloud(home, "create", "job", "--type", "fine-tune", "--gpus", "1", "--name", "s-train",
                             "--wait", "--", "python3", "-c", "print('trained')").returncode
    for step in (("jobs", "wait", "s-train"), ("jobs", "list"), ("jobs", "logs", "s-train"),
                 ("bill", "--by", "kind"), ("router", "keys", "list")):
        answers[" ".join(step)] = aicloud(home, *step).returncode
    answers["rejected job"] = aicloud(home, "create", "job", "--gpus", "16", "--name", "s-huge", "--wait",
                                      "--", "true").returncode
    _router_calls(walk, router, json.loads((home / "router-keys.json").read_text())["legal"])
    created = aicloud(home, "router", "keys", "create", "--team", "research", "--name", "s-key", "-o", "json")
    made = json.loads(created.stdout)
    walk.made["router key made in the walk"], walk.router_key_id = made["key"], made["key_id"]
    with httpx.Client(base_url=router, timeout=30, headers={"authorization": f"Bearer {made['key']}"}) as c:
        answers["new key"] = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **CHAT}).status_code
        answers["revoke"] = aicloud(home, "router", "keys", "revoke", made["key_id"]).returncode
        deadline = time.monotonic() + 10  # the router keeps a key it has seen for 5 s
        while (status := c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", **CHAT}).status_code) \
                == 200 and time.monotonic() < deadline:
            time.sleep(0.5)
        answers["revoked key"] = status
    answers["wrong API key"] = aicloud(home, "jobs", "list", AICLOUD_API_KEY=WRONG_API_KEY).returncode
    answers["wrong admin token"] = aicloud(home, "router", "keys", "list",
                                           AICLOUD_ROUTER_ADMIN_TOKEN=WRONG_ADMIN_TOKEN).returncode
    answers["agent run"] = aicloud(home, "agents", "run", "--max-steps", "1", "Summarise nothing").returncode
    walk.made |= {"wrong API key": WRONG_API_KEY, "wrong router key": WRONG_ROUTER_KEY,
                  "wrong admin token": WRONG_ADMIN_TOKEN}


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    """A stack up with the provider key planted, the golden path walked, the stack down."""
    home = tmp_path_factory.mktemp("secrets")
    (home / "run").mkdir(mode=0o700)
    for name, value in (("fake-llm-key", PROVIDER_KEY), ("postgres-password", DATABASE_PASSWORD)):
        planted = os.open(home / "run" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(planted, "w") as out:  # `up` keeps it: it makes only the secrets that are missing
            out.write(value)
    walk = Walk(home)
    try:
        up = aicloud(home, "dev", "up", "--detach", "--free-ports", **DEBUG)
        assert up.returncode == 0, up.stdout + up.stderr
        status = json.loads(aicloud(home, "dev", "status", "--json").stdout)
        router = next(str(row["url"]) for row in status if row["name"] == "inference-router")
        walk.made |= database_passwords(home)  # run/stack.json goes with `down`
        walk.answers["database without password"] = asyncio.run(_connect(home, None))
        walk.answers["database with the planted password"] = asyncio.run(_connect(home, DATABASE_PASSWORD))
        _golden_path(walk, router)
    finally:
        down = aicloud(home, "dev", "down")
        _kill_leftovers(home)
    assert down.returncode == 0, down.stderr
    yield walk


def home_secrets(walk: Walk) -> dict[str, str]:
    """Every secret of the home, by where it is kept, and those the walk made or presented."""
    home, found = walk.home, dict(walk.made)
    for path in sorted((home / "run").iterdir()):
        if path.name in NOT_SECRETS or not path.is_file():
            continue
        text = path.read_text().strip()
        values = json.loads(text) if path.suffix == ".json" else {"": text}
        # secrets here are 24+ random bytes; anything short (a pid, a port) is not one
        found |= {f"run/{path.name}{'[' + k + ']' if k else ''}": str(v) for k, v in values.items()
                  if len(str(v)) >= 16}
    for name in ("keys.json", "router-keys.json"):
        found |= {f"{name}[{team}]": key for team, key in json.loads((home / name).read_text()).items()}
    # a key is <kind>_<id>_<secret>: the id is public (logged on purpose), the rest is not
    found |= {f"{name} (secret part)": value.split("_", 2)[2] for name, value in list(found.items())
              if value.count("_") >= 2 and value[:3] in ("ak_", "vk_")}
    return found


async def _connect(home: Path, password: str | None) -> str:
    """Connect to the stack's PostgreSQL over TCP as ``postgres``: "ok" or the error's class."""
    port = StackFiles(home).saved_ports()["postgres"]
    try:
        db = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="aicloud",
                                   password=password, timeout=10)
    except Exception as error:  # the class is the answer
        return type(error).__name__
    await db.close()
    return "ok"


def database_passwords(home: Path) -> dict[str, str]:
    """The password in each service's database URL (the local server wants one)."""
    return {f"{row['name']} {var} password": password
            for row in json.loads((home / "run" / "stack.json").read_text())
            for var, value in row.get("env", {}).items()
            if var.endswith("DATABASE_URL") and (password := urlsplit(value).password)}


def log_files(home: Path) -> list[Path]:
    """Everything under logs/, and every *.log / *.jsonl under the home and its scratch folders."""
    roots = [home, *(StackFiles(home).scratch_dir(kind) for kind in ("serving", "notebooks", "sandboxes"))]
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):  # does not follow links (a sandbox's rootfs)
            for path in (Path(folder, name) for name in names):
                wanted = path.suffix in (".log", ".jsonl") or path.is_relative_to(home / "logs")
                if wanted and path.is_file() and not path.is_symlink():
                    found.append(path)
    return found


def test_the_walk_used_the_planted_secrets_and_met_the_wrong_ones(walk: Walk) -> None:
    answers = walk.answers
    # the fake upstream only answers the planted provider key: a 200 here means the router sent it
    for name in ("chat", "stream", "anthropic", "embeddings", "new key"):
        assert answers[name] == 200, (name, answers)
    assert answers["upstream-500"] == 502, answers
    for name in ("wrong-bearer", "wrong-x-api-key", "revoked key"):
        assert answers[name] == 401, (name, answers)
    for name in ("job", "jobs wait s-train", "jobs list", "jobs logs s-train", "bill --by kind",
                 "router keys list", "revoke"):
        assert answers[name] == 0, (name, answers)
    assert answers["rejected job"] == 1 and answers["agent run"] == 1, answers
    assert answers["wrong API key"] == 1 and answers["wrong admin token"] == 1, answers
    # the database wants the planted password: without it, even on the machine, no way in
    assert answers["database with the planted password"] == "ok", answers
    assert answers["database without password"] in ("InvalidPasswordError", "ClientConfigurationError"), \
        answers


def test_no_secret_appears_in_any_log_or_trace(walk: Walk) -> None:
    found = home_secrets(walk)
    assert found["run/fake-llm-key"] == PROVIDER_KEY
    assert found["run/postgres-password"] == DATABASE_PASSWORD
    # every service connects with it (in its DATABASE_URL, searched for as such too)
    assert {v for k, v in found.items() if k.endswith("DATABASE_URL password")} == {DATABASE_PASSWORD}
    assert {"run/router-admin-token", "run/ledger-admin-token", "run/agent-runtime-admin-token",
            "run/agent-state-master-keys.json[k1]", "keys.json[legal]", "router-keys.json[legal]",
            } <= set(found)
    files = log_files(walk.home)
    names = {path.name for path in files}
    assert {"inference-router.log", "catalog.log", "fake-llm.log", "nats.log", "postgres.log",
            "inference-router.jsonl", "job.log"} <= names, sorted(names)
    text = {path: path.read_bytes() for path in files}
    # the search reads what was logged: the new key's public id is in the router's log
    assert any(f'"key_id": "{walk.router_key_id}"'.encode() in data for data in text.values())
    leaks = [f"{name} in {path}" for name, value in found.items() for path, data in text.items()
             if value.encode() in data]
    assert not leaks, leaks
