"""The fault suite, long version: the fast subset's mixed workload (tests/faults/) on a local
stack of its own, for BENCH_ROUNDS rounds (default 3); in each, every component that can die is
SIGKILLed and brought back with ``aicloud dev restart`` in turn, the infrastructure included
(NATS, PostgreSQL, Temporal), then the provisioner hangs (SIGSTOP) past its activities'
heartbeat timeouts. After each round the counts must add up (tests/faults/harness.py: jobs ended
once, quota holds 0, the ledger has every billable event once, no orphan, no dead letter, no
hung request).

Prints the faults x rounds table, recovery time per component (``restart`` to ready, p50 and
max) and the checks; the last line is one JSON object: faults survived / tried, events lost,
events duplicated, recovery per component.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.test_local_stack import aicloud, processes_under
from tests.faults import harness

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
KILLED = ("nats", "postgres", "temporal", "catalog", "quota", "provisioner", "cost-ledger",
          "inference-router", "agent-runtime", "observability-collector")
HANG_S = 35


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="aicloud-faults-"))
    up = aicloud(home, "dev", "up", "--detach", "--free-ports", timeout=300)
    if up.returncode != 0:
        print(up.stdout + up.stderr)
        return 1
    recovery: dict[str, list[float]] = {name: [] for name in KILLED}
    tried = survived = lost = duplicated = 0
    rounds = []
    try:
        for n in range(1, ROUNDS + 1):
            done = harness.run_round(home, KILLED, hang_s=HANG_S)
            faults, failed = done.faults, done.failed
            tried += len(KILLED) + 1
            for name, kind, seconds in faults:
                if kind == "SIGKILL":
                    recovery[name].append(seconds)
            found = harness.verdict(home, done.work)
            print(f"\n--- round {n}/{ROUNDS} ---\n{found.report(faults)}")
            ok = all(found.checks.values()) and not failed
            survived += len(faults) if ok else 0
            lost += int(found.figures["events lost"])
            duplicated += int(found.figures["events duplicated"])
            rounds.append({"round": n, "ok": ok, "failed_restarts": failed, **{
                k: v for k, v in found.figures.items() if isinstance(v, int)}})
            if not ok:
                print(json.dumps({**found.details, "failed_restarts": failed}, default=str)[:3000])
    finally:
        aicloud(home, "dev", "down", timeout=300)
        for proc in processes_under(home):
            proc.kill()

    print("\ncomponent                 restarts   p50 s   max s")
    summary = {}
    for name, times in recovery.items():
        if times:
            summary[name] = {"p50_s": round(statistics.median(times), 2), "max_s": round(max(times), 2),
                             "n": len(times)}
            print(f"{name:<25} {len(times):>8} {statistics.median(times):7.2f} {max(times):7.2f}")
    print(f"\nfaults survived {survived}/{tried}; events lost {lost}; events duplicated {duplicated}; "
          f"machine: {platform.node()}, {os.cpu_count()} cores")
    print(json.dumps({"rounds": ROUNDS, "faults_tried": tried, "faults_survived": survived,
                      "events_lost": lost, "events_duplicated": duplicated, "recovery_s": summary,
                      "per_round": rounds, "cores": os.cpu_count()}))
    return 0 if survived == tried and not lost and not duplicated else 1


if __name__ == "__main__":
    sys.exit(main())
