"""What the benchmarks share: real NATS and PostgreSQL from the wheels, on free ports."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from aicloud.local import servers


def start_servers(root: Path, database: str) -> tuple[str, str, list[subprocess.Popen[bytes]]]:
    """NATS (JetStream) and PostgreSQL under ``root``; returns their URLs and processes."""
    nats_port, monitor = servers.free_port(), servers.free_port()
    nats_proc = subprocess.Popen(servers.nats_argv(port=nats_port, monitor_port=monitor,
                                                   store_dir=root / "nats"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    layout = servers.postgres_prepare(root / "pg")
    pg_port = servers.free_port()
    pg_proc = subprocess.Popen(servers.postgres_argv(layout, port=pg_port), user=layout.user,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    servers.wait_for_database(pg_port, database)
    while not servers.port_open(nats_port):
        time.sleep(0.05)
    return (f"nats://127.0.0.1:{nats_port}",
            servers.postgres_url(pg_port, database, socket_dir=layout.socket_dir), [nats_proc, pg_proc])


def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(int(len(sorted_values) * q), len(sorted_values) - 1)]


def seconds_summary(values: list[float]) -> dict[str, float]:
    """p50, p90 and max of timings in seconds, as the tables print them."""
    ordered = sorted(values)
    return {"p50_s": round(statistics.median(ordered), 3), "p90_s": round(percentile(ordered, 0.9), 3),
            "max_s": round(ordered[-1], 3)}
