"""Shared by the endpoint benchmarks: a local stack in a throwaway home, a deployed endpoint,
and the team's router key."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def aicloud(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AICLOUD_HOME": str(home), "AICLOUD_TEAM": "legal"}
    return subprocess.run(
        [sys.executable, "-m", "aicloud", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )


@contextlib.contextmanager
def local_stack() -> Iterator[tuple[Path, dict[str, str]]]:
    """(home, component urls) of a fresh ``aicloud dev up``; always brought down."""
    with tempfile.TemporaryDirectory(prefix="aicloud-bench-") as tmp:
        home = Path(tmp)
        up = aicloud(home, "dev", "up", "--detach", "--free-ports")
        try:
            if up.returncode != 0:
                raise SystemExit(f"dev up failed:\n{up.stdout}\n{up.stderr}")
            rows = json.loads(aicloud(home, "dev", "status", "--json").stdout)
            yield home, {row["name"]: str(row["url"]) for row in rows}
        finally:
            aicloud(home, "dev", "down")


def deploy(home: Path, name: str, *args: str) -> dict[str, Any]:
    started = time.monotonic()
    result = aicloud(home, "deploy", "model", "--name", name, *args, "-o", "json")
    if result.returncode != 0:
        raise SystemExit(f"deploy {name} failed:\n{result.stdout}\n{result.stderr}")
    endpoint: dict[str, Any] = json.loads(result.stdout)
    endpoint["deploy_s"] = time.monotonic() - started
    return endpoint


def router_key(home: Path, team: str = "legal") -> str:
    return str(json.loads((home / "router-keys.json").read_text())[team])


def endpoint(home: Path, name: str) -> dict[str, Any]:
    return dict(json.loads(aicloud(home, "endpoints", "get", name, "-o", "json").stdout))
