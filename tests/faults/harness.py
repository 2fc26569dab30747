"""The fault suite's parts, shared by its fast subset (``test_fault_suite.py``, in ``make
test``) and its long version (``bench/faults.py``): a mixed workload against a local stack, the
faults (SIGKILL and ``aicloud dev restart``, SIGSTOP), and the counts that must add up after."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import psutil

from aicloud.local.components import database_url
from aicloud.local.state import StackFiles
from tests.e2e.test_local_stack import aicloud, nats_login, processes_under

TERMINAL = {"completed", "failed", "terminated", "rejected"}
TERMINAL_SUBJECTS = ("aicloud.jobs.completed.v1", "aicloud.jobs.failed.v1", "aicloud.jobs.terminated.v1",
                     "aicloud.jobs.rejected.v1")


def components(home: Path) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in json.loads(aicloud(home, "dev", "status", "--json").stdout)}


class Workload:
    """Jobs through the platform API and requests through the router, in threads, recording
    what each answer was; connection errors while a component is down are retried (jobs, as a
    client with an idempotent name would) or recorded (router requests)."""

    def __init__(self, home: Path, urls: dict[str, dict[str, Any]]) -> None:
        self.api = str(urls["catalog"]["url"]) + "/v1"
        self.router = str(urls["inference-router"]["url"]) + "/v1"
        self.keys = json.loads((home / "keys.json").read_text())
        self.router_keys = json.loads((home / "router-keys.json").read_text())
        # research's requests go with a key of 10 per minute: most of them are over it
        created = aicloud(home, "router", "keys", "create", "--team", "research", "--name", "faults",
                          "--rpm", "10", "-o", "json")
        assert created.returncode == 0, created.stderr
        self.router_keys["research"] = json.loads(created.stdout)["key"]
        self.jobs: dict[str, str] = {}  # job id -> team
        self.answers: Counter[str] = Counter()
        self.api_unavailable = 0  # platform API 503s (its database restarting), retried
        self.stop = threading.Event()

    def call(self, method: str, path: str, team: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:  # down (refused) or its database down (503 + Retry-After): a client retries
            try:
                answer = httpx.request(method, self.api + path, timeout=30,
                                       headers={"authorization": f"Bearer {self.keys[team]}"}, **kwargs)
                if answer.status_code != 503:
                    return answer
                self.api_unavailable += 1
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the platform API did not come back for {path}"
            time.sleep(0.5)

    def submit(self, name: str, team: str, script: str, **extra: Any) -> None:
        answer = self.call("POST", "/jobs", team, json={
            "name": name, "command": ["python3", "-c", script], **extra})
        assert answer.status_code in (202, 409), answer.text  # 409: a retried submit that landed
        self.jobs[name] = team

    def jobs_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            team = ("legal", "research")[n % 2]
            name = f"fault-{n}"
            if n % 5 == 3:
                self.submit(name, team, "import time; time.sleep(60)", max_runtime_s=2)
            else:
                self.submit(name, team, "import time; time.sleep(1.5); print('done')", gpus=n % 2)
            if n % 5 == 1:
                time.sleep(0.3)
                self.call("POST", f"/jobs/{name}/cancel", team)
            n += 1
            time.sleep(1.0)

    def router_loop(self) -> None:
        n = 0
        while not self.stop.is_set():
            team = ("legal", "research")[n % 2]
            stream = n % 3 == 0
            try:
                with httpx.Client(timeout=30) as client:
                    answer = client.post(self.router + "/chat/completions", headers={
                        "authorization": f"Bearer {self.router_keys[team]}"}, json={
                        "model": "gpt-4o-mini", "stream": stream, "user": f"u{n % 7}",
                        "messages": [{"role": "user", "content": f"question {n}"}]})
                    answer.read()
                self.answers[str(answer.status_code)] += 1
            except httpx.ConnectError:
                self.answers["refused (router down)"] += 1
            except httpx.TimeoutException:
                self.answers["hung"] += 1
            except httpx.TransportError as exc:
                self.answers[f"broken off: {type(exc).__name__}"] += 1
            n += 1
            time.sleep(0.15)


async def bus_counts(login: dict[str, Any]) -> dict[str, Any]:
    """What the bus holds: terminal job events per job, usage and inference event ids, DLQ.
    ``login``: ``nats.connect`` options (``nats_login``: as ops)."""
    nc = await nats.connect(**login)
    js = nc.jetstream()
    out: dict[str, Any] = {"terminal": Counter(), "billable": set(), "inference_cost": Decimal(0)}
    try:
        for stream, subjects in (("AICLOUD_JOBS", TERMINAL_SUBJECTS),
                                 ("AICLOUD_USAGE", ("aicloud.usage.recorded.v1",)),
                                 ("AICLOUD_INFERENCE", ("aicloud.inference.completed.v1",))):
            for subject in subjects:
                sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
                while True:
                    try:
                        msg = await sub.next_msg(timeout=1)
                    except nats.errors.TimeoutError:
                        break
                    event = json.loads(msg.data)
                    if stream == "AICLOUD_JOBS":
                        out["terminal"][event["job_id"]] += 1
                    else:
                        out["billable"].add(event["event_id"])
                        if stream == "AICLOUD_INFERENCE" and event.get("cost_usd") is not None:
                            out["inference_cost"] += Decimal(event["cost_usd"])
                await sub.unsubscribe()
        out["dlq"] = (await js.stream_info("AICLOUD_DLQ")).state.messages
    finally:
        await nc.close()
    return out


async def ledger_counts(dsn: str) -> tuple[int, Decimal]:
    db = await asyncpg.connect(dsn)
    try:
        lines = await db.fetchval("SELECT count(DISTINCT event_id) FROM cost_ledger.ledger_entries")
        usd = await db.fetchval("SELECT coalesce(sum(usd), 0) FROM cost_ledger.ledger_entries"
                                " WHERE kind = 'inference'")
        return int(lines), Decimal(usd)
    finally:
        await db.close()


async def held_gpus(dsn: str, jobs: list[str]) -> int:
    db = await asyncpg.connect(dsn)
    try:
        return int(await db.fetchval("SELECT coalesce(sum(gpus), 0) FROM quota.allocations"
                                     " WHERE released_at IS NULL AND resource_id = ANY($1)", jobs))
    finally:
        await db.close()


def start(home: Path) -> tuple[Workload, list[threading.Thread]]:
    work = Workload(home, components(home))
    threads = [threading.Thread(target=work.jobs_loop, daemon=True),
               threading.Thread(target=work.router_loop, daemon=True)]
    for thread in threads:
        thread.start()
    return work, threads


def stop(work: Workload, threads: list[threading.Thread]) -> None:
    work.stop.set()
    for thread in threads:
        thread.join(timeout=90)


def kill_and_restart(home: Path, name: str) -> float:
    """SIGKILL the component, ``aicloud dev restart`` it; seconds until it is ready again."""
    os.kill(components(home)[name]["pid"], signal.SIGKILL)
    started = time.monotonic()
    result = aicloud(home, "dev", "restart", name, timeout=180)
    assert result.returncode == 0, (name, result.stdout + result.stderr)
    return time.monotonic() - started


def hang(home: Path, name: str, seconds: float) -> None:
    """SIGSTOP (a hang, not a crash), then SIGCONT."""
    pid = components(home)[name]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


@dataclass
class Round:
    work: Workload
    faults: list[tuple[str, str, float]] = field(default_factory=list)  # (component, fault, seconds back)
    failed: list[str] = field(default_factory=list)  # restarts that did not come back


def run_round(home: Path, killed: Sequence[str], *, hang_s: float) -> Round:
    """The workload running while each of ``killed`` is SIGKILLed and restarted in turn, then
    the provisioner hangs for ``hang_s``; returns once the workload has stopped."""
    work, threads = start(home)
    done = Round(work)
    try:
        time.sleep(4)
        for name in killed:
            try:
                done.faults.append((name, "SIGKILL", kill_and_restart(home, name)))
            except AssertionError as exc:
                done.failed.append(f"{name}: {exc}"[:300])
                continue
            time.sleep(3)
        hang(home, "provisioner", hang_s)
        done.faults.append(("provisioner", f"SIGSTOP {hang_s:g} s", float(hang_s)))
        time.sleep(3)
    finally:
        stop(work, threads)
    return done


@dataclass
class Verdict:
    checks: dict[str, bool]
    figures: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def report(self, faults: list[tuple[str, str, float]]) -> str:
        lines = ["fault                   kind            back in"]
        lines += [f"{name:<23} {kind:<15} {seconds:6.1f} s" for name, kind, seconds in faults]
        lines.append("")
        lines += [f"{key}: {value}" for key, value in self.figures.items()]
        lines.append("")
        lines += [f"{'ok ' if ok else 'BAD'} {check}" for check, ok in self.checks.items()]
        return "\n".join(lines)


def verdict(home: Path, work: Workload, *, settle_s: float = 180) -> Verdict:
    """Wait for every job to end and the ledger to catch up, then count."""
    ports = json.loads((home / "run" / "ports.json").read_text())
    dsn = database_url(StackFiles(home), ports["postgres"])
    deadline = time.monotonic() + settle_s
    while True:
        statuses = {job: work.call("GET", f"/jobs/{job}", team).json()["status"]
                    for job, team in work.jobs.items()}
        if all(s in TERMINAL for s in statuses.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    unfinished = {j: s for j, s in statuses.items() if s not in TERMINAL}
    login = nats_login(components(home))
    for _ in range(60):  # the ledger and the bus settle
        bus = asyncio.run(bus_counts(login))
        lines, ledger_usd = asyncio.run(ledger_counts(dsn))
        if lines >= len(bus["billable"]):
            break
        time.sleep(1)
    held = asyncio.run(held_gpus(dsn, list(work.jobs)))
    owners = {int(c["pid"]) for c in components(home).values() if c.get("pid")}
    owned = set(owners)
    for pid in owners:
        try:
            owned |= {p.pid for p in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            continue
    orphans = [p for p in processes_under(home) if p.pid not in owned and p.pid != os.getpid()]
    twice = {job: n for job, n in bus["terminal"].items() if job in work.jobs and n != 1}
    missing = sorted(set(work.jobs) - set(bus["terminal"]))
    checks = {
        "every job ended": not unfinished,
        "one terminal event per job": not twice and not missing,
        "quota holds 0 GPUs": held == 0,
        "ledger: every billable event once": lines == len(bus["billable"]),
        "ledger: inference total = events' costs": ledger_usd == bus["inference_cost"],
        "no orphan process": not orphans,
        "dead letters: none": bus["dlq"] == 0,
        "no router request hung": work.answers["hung"] == 0,
        "over its limit: 429s": work.answers["429"] > 0,
    }
    figures = {
        "jobs": len(work.jobs), "job statuses": dict(Counter(statuses.values())),
        "terminal events": sum(bus["terminal"].values()),
        "router requests": sum(work.answers.values()), "router answers": dict(work.answers),
        "platform API 503s retried": work.api_unavailable,
        "billable events on the bus": len(bus["billable"]), "in the ledger": lines,
        "events lost": max(len(bus["billable"]) - lines, 0) + len(missing),
        "events duplicated": sum(n - 1 for n in twice.values() if n > 1),
        "inference usd (ledger / events)": f"{ledger_usd} / {bus['inference_cost']}",
    }
    details = {"unfinished": unfinished, "terminal events != 1": twice, "no terminal event": missing[:10],
               "held": held, "orphans": [p.info for p in orphans][:5], "dlq": bus["dlq"]}
    return Verdict(checks, figures, details)
