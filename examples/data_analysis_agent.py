"""A data-analysis agent: it reads a CSV by writing Python and running it in its sandbox, then
answers from what the code printed. Every LLM call goes through the platform's inference router
(with the team's key), every tool call runs in a gVisor/bubblewrap sandbox with no network.

    python examples/data_analysis_agent.py [CSV] [--team legal] [--model gpt-4o-mini] [--approve]

On the local stack the model is the fake OpenAI upstream, which really calls the tool; start
the stack with AICLOUD_OPENAI_BASE_URL and OPENAI_API_KEY set to use a real provider instead.
With --approve the tool waits for a human: this script approves it, as `aicloud agents approve`
would.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicloud.sandboxes_client import SandboxClient

DEFAULT_CSV = Path(__file__).parent / "datasets/projects/legal-rag/datasets/v2/clauses.csv"
SYSTEM = ("You are a careful data analyst. The user's files are in your working directory. "
          "Use the run_python tool to compute what you need; report numbers only from its output.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="?", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--team", default="legal")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--approve", action="store_true", help="gate the tool behind an approval")
    args = parser.parse_args()
    client = SandboxClient(team=args.team)
    run = client.request("POST", "/v1/agents/runs", json={
        "agent": "analyst", "model": args.model, "system": SYSTEM,
        "task": f"Describe the columns of {args.csv.name}: count, mean, min and max of each.",
        "files": {args.csv.name: args.csv.read_text()},
        "approval_required": ["run_python"] if args.approve else [], "max_steps": 6, "max_cost_usd": 0.5,
    }).json()
    run_id = run["run_id"]
    print(f"agent run {run_id} started")
    approved: set[str] = set()
    while True:
        trace = client.request("GET", f"/v1/agents/runs/{run_id}/trace").json()
        for step in trace["steps"]:
            call_id = step["detail"].get("call_id")
            if step["kind"] == "approval" and call_id not in approved:
                print(f"approving {step['name']} ({call_id})")
                client.request("POST", f"/v1/agents/runs/{run_id}/approve", json={"call_id": call_id})
                approved.add(call_id)
        if trace["run"]["status"] != "running":
            break
        time.sleep(0.3)
    for step in trace["steps"]:
        took = f"{step['duration_ms']:.0f} ms" if step["duration_ms"] is not None else ""
        print(f"  {step['kind']:9} {step['name']:18} {step['status']:6} {took}")
    run = trace["run"]
    print(f"{run['status']} ({run['reason']}), {run['steps']} steps, ${run['cost_usd']:.6f}\n")
    print(run["answer"] or "")
    return 0 if run["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
