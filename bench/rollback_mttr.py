"""Rollback MTTR: a bad canary is failing requests; how long from `aicloud endpoints rollback`
until callers stop seeing errors.

A fresh local stack trains two versions of the demo model (version 2 asks for a renamed
feature, so every request routed to it fails) and serves version 1. Each round deploys
version 2 as a 50 % canary (automatic judging is pushed out to 10 min, so only the manual
rollback ends it), puts a steady load of `/v1/predict` calls from 40 sticky users through the
router, and then rolls back: by the CLI (what an engineer types, process start included) or
by one API call. Time to effect = from the command to the last failed request, after which
2 s pass with none. Also reported: what the CLI itself says it took.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import percentile
from bench.workloads import ROOT, aicloud, deploy, local_stack, router_key

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
QUIET_S = 2.0
CLAUSE = {"clause_words": 362, "citations": 6, "has_indemnity": 1, "has_liability_cap": 0}


class Load(threading.Thread):
    """Sequential predict calls as fast as the router answers; remembers when each failed."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.http = httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {key}"})
        self.failures: list[float] = []
        self.sent = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            body = {"model": "clause-risk", "instances": [CLAUSE], "user": f"u{self.sent % 40}"}
            if self.http.post("/v1/predict", json=body).status_code != 200:
                self.failures.append(time.monotonic())
            self.sent += 1

    def settled_after(self, started: float) -> float:
        """Seconds from ``started`` to the last failure, once QUIET_S passed without one."""
        while True:
            last = max(self.failures, default=started)
            if time.monotonic() - last >= QUIET_S:
                return max(0.0, last - started)
            time.sleep(0.05)


def train(home: Path, name: str, *params: str) -> None:
    result = aicloud(home, "create", "job", "--name", name, "--dataset", "projects/legal-rag/datasets/v2",
                     "--model-name", "clause-risk", "--param", "epochs=2", *params, "--wait", "-o", "json",
                     "--", "python3", str(ROOT / "examples" / "train.py"))
    if result.returncode != 0:
        raise SystemExit(f"training {name} failed:\n{result.stdout}\n{result.stderr}")


def rollback_by_api(catalog: str, home: Path) -> None:
    key = json.loads((home / "keys.json").read_text())["legal"]
    httpx.post(f"{catalog}/v1/endpoints/clause-risk/rollback", headers={"authorization": f"Bearer {key}"},
               timeout=30).raise_for_status()


def main() -> None:
    os.environ["AICLOUD_CANARY_WINDOW_S"] = "600"  # the stack's provisioner inherits it
    results: dict[str, list[float]] = {"cli": [], "api": []}
    reported: list[float] = []
    with local_stack() as (home, urls):
        train(home, "mttr-1")
        train(home, "mttr-2", "--param", "feature_names=word_count,citations,has_indemnity,has_liability_cap")
        deploy(home, "clause-risk", "--version", "1")
        for round_ in range(ROUNDS):
            deploy(home, "clause-risk", "--version", "2", "--canary", "50")
            load = Load(urls["inference-router"], router_key(home))
            load.start()
            while len(load.failures) < 20:  # the canary is hurting callers
                time.sleep(0.05)
            how = "cli" if round_ % 2 == 0 else "api"
            started = time.monotonic()
            if how == "cli":
                done = aicloud(home, "endpoints", "rollback", "clause-risk")
                if done.returncode != 0:
                    raise SystemExit(f"rollback failed:\n{done.stdout}\n{done.stderr}")
                reported.append(float(done.stdout.split("rolled back in ", 1)[1].split(" s", 1)[0]))
            else:
                rollback_by_api(urls["catalog"], home)
            results[how].append(load.settled_after(started))
            load.running = False
            load.join()
    print(f"\nrollback MTTR, {ROUNDS} rounds ({os.cpu_count()} CPUs): command -> last failed request")
    print(f"{'':36} {'p50 s':>7} {'max s':>7}")
    for how, label in (("cli", "aicloud endpoints rollback (CLI)"), ("api", "POST .../rollback (API)")):
        values = sorted(results[how])
        print(f"{label:36} {percentile(values, 0.5):>7.2f} {max(values):>7.2f}")
    label = "the CLI reports (until recorded)"
    print(f"{label:36} {percentile(sorted(reported), 0.5):>7.2f} {max(reported):>7.2f}")
    print(json.dumps({
        "bench": "rollback_mttr",
        "cli_p50_s": round(percentile(sorted(results["cli"]), 0.5), 3),
        "cli_max_s": round(max(results["cli"]), 3),
        "api_p50_s": round(percentile(sorted(results["api"]), 0.5), 3),
        "api_max_s": round(max(results["api"]), 3),
        "cli_reported_p50_s": round(percentile(sorted(reported), 0.5), 3),
        "rounds": ROUNDS,
        "at": datetime.now().isoformat(timespec="seconds"),
    }))


if __name__ == "__main__":
    main()
