"""Stack start-up: cold ``aicloud dev up --detach --free-ports`` to all-ready.

Cold = a new, empty ``$AICLOUD_HOME`` (initdb, JetStream and Temporal stores created); warm =
``up`` again on the same home after ``down`` (data reused). Side by side with the
infrastructure alone (NATS + PostgreSQL + Temporal) — the floor the services add to.
Goal: cold <= 15 s on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.local.stack import Stack

RUNS = int(os.environ.get("BENCH_RUNS", "3"))


def cli_up(home: Path) -> float:
    env = {**os.environ, "AICLOUD_HOME": str(home)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "aicloud", "dev", "up", "--detach", "--free-ports"],
                            env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dev up failed:\n{result.stdout}\n{result.stderr}")
    return elapsed


def cli_down(home: Path) -> None:
    subprocess.run([sys.executable, "-m", "aicloud", "dev", "down"], capture_output=True,
                   env={**os.environ, "AICLOUD_HOME": str(home)}, timeout=120, check=True)


def infra_only(home: Path) -> float:
    stack = Stack(home)
    started = time.perf_counter()
    ports = stack.ports(free=True)
    infra, _ = stack.plan(ports)
    for component in infra:
        stack.spawn(component)
    stack.write_state(infra)
    for component in infra:
        stack.wait_ready(component, stack.probe(component, ports))
    elapsed = time.perf_counter() - started
    stack.down(report=lambda _: None)
    return elapsed


def main() -> None:
    cold, warm, infra = [], [], []
    for _ in range(RUNS):
        home = Path(tempfile.mkdtemp(prefix="bench-stack-"))
        cold.append(cli_up(home))
        cli_down(home)
        warm.append(cli_up(home))
        cli_down(home)
        infra.append(infra_only(Path(tempfile.mkdtemp(prefix="bench-infra-"))))
    rows = {
        "aicloud dev up, cold (new home)": cold,
        "aicloud dev up, warm (same home)": warm,
        "infrastructure only, cold": infra,
    }
    print(f"stack start-up — {platform.node()}, {os.cpu_count()} cores, {RUNS} runs each")
    print(f"{'what':36} {'median s':>9} {'min s':>7} {'max s':>7}")
    summary = {}
    for name, values in rows.items():
        summary[name] = {"median_s": round(statistics.median(values), 2),
                         "min_s": round(min(values), 2), "max_s": round(max(values), 2)}
        row = summary[name]
        print(f"{name:36} {row['median_s']:>9} {row['min_s']:>7} {row['max_s']:>7}")
    cold_median = summary["aicloud dev up, cold (new home)"]["median_s"]
    print(json.dumps({"benchmark": "stack_startup", "results": summary, "goal": {"cold_s_max": 15},
                      "goal_met": cold_median <= 15}))


if __name__ == "__main__":
    main()
