"""Back up a running local stack into one archive; bring the platform back from it into an
empty home (``aicloud admin backup`` / ``aicloud admin restore``).

No two stores can be copied at the same instant, so the parts are taken in the order in which
each may depend on the one before it, each at least as new as that one:

1. every durable JetStream consumer's position (the sequence up to which it has acknowledged);
2. PostgreSQL: ``pg_dump --serializable-deferrable``, one snapshot of every service's schema
   (the router's hashed keys, the ledger, budgets, the registry and lineage are all there);
3. Temporal's database, with sqlite's online backup;
4. every JetStream stream (its messages), by the snapshot API;
5. the home's files that rows point to or that open them (job folders, artifacts, MLflow's
   store, the demo key files, the agent-state master keys) and the policies the stack runs.

So: a consumer acknowledges an event only after its transaction commits (positions before the
database); a service that starts a workflow records that in its inbox after the start (the
database before Temporal); an outbox row is marked published only once the stream has the event,
and a workflow's publish activity completes only then too (the database and Temporal before the
messages). A restore puts the streams back and then moves every durable consumer back to the
position of step 1: what it gets again, its inbox drops, and whatever the database missed (an
event taken in after its snapshot) is taken in again. What is lost is what reached no stream
before step 4 and no table before step 2.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS

from aicloud.local import jetstream_backup, supervisor
from aicloud.local.archive import FORMAT, VERSION, copy_files, pack, parts, unpack
from aicloud.local.components import DATABASE, database_password
from aicloud.local.servers import postgres_bin_dir, postgres_client_env
from aicloud.local.stack import Stack
from aicloud.local.state import Ports
from guardrails import POLICY_DIR

Report = Callable[[str], None]
T = TypeVar("T")
HOME_FILES = ("keys.json", "router-keys.json", "run/agent-state-master-keys.json",
              "data/router-usage.spool", "artifacts", "jobs")
HOME_DATABASES = ("mlflow.db",)  # sqlite: copied with the online backup API, never mid-write
RESTORED_POLICIES = "restored-policies"


class BackupError(RuntimeError):
    """A backup or restore cannot go on; the message says why and what to do."""


class HomeNotEmpty(BackupError):
    """A restore was pointed at a home that has state already."""


@dataclass(frozen=True)
class Running:
    """What a backup needs to know of the stack that runs in a home."""

    home: Path
    ports: Ports
    names: list[str]
    temporal_db: Path

    @property
    def stack(self) -> dict[str, Any]:
        """How to start the same stack again: its engine, NATS servers and components."""
        return {"engine": "ray" if "ray" in self.names else "local",
                "nats_nodes": sum(1 for n in self.names if n == "nats" or n.startswith("nats-")),
                "components": self.names}


def running(stack: Stack) -> Running:
    state = stack.read_state()
    if not state:
        raise BackupError(f"no stack runs in {stack.home}: start it (`aicloud dev up --detach`) first")
    down = [str(e["name"]) for e in state if not supervisor.alive(e.get("pid"))]
    if down:
        raise BackupError(f"not running: {', '.join(down)} (`aicloud dev status`); a backup needs "
                          "every component up")
    temporal = next((e for e in state if e["name"] == "temporal"), None)
    if temporal is None or "--db-filename" not in temporal["argv"]:
        raise BackupError("this stack's Temporal keeps no database file to back up")
    db = Path(temporal["argv"][temporal["argv"].index("--db-filename") + 1])
    if not db.resolve().is_relative_to(stack.home.resolve()):
        raise BackupError(f"Temporal's database {db} is outside the home {stack.home}")
    return Running(stack.home.resolve(), stack.files.saved_ports(), [str(e["name"]) for e in state],
                   db.resolve())


async def connect_bus(stack: Stack) -> NATS:
    """The stack's NATS as ops, the identity with every right (the snapshot and restore API)."""
    urls = [str(e["url"]) for e in stack.read_state() if str(e["name"]).startswith("nats")]
    return await nats.connect(servers=urls, connect_timeout=5, max_reconnect_attempts=2,
                              **stack.nats_login())


def backup(stack: Stack, target: Path, *, report: Report) -> dict[str, Any]:
    """Write one archive of the stack running in ``stack.home`` to ``target``; a summary."""
    live, began = running(stack), time.monotonic()
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aicloud-backup-", dir=target.parent) as tmp:
        staging = Path(tmp)
        manifest = _take(stack, live, staging, report) | {"parts": parts(staging)}
        size = pack(staging, manifest, target)
    report(f"wrote {target} ({size} bytes, {len(manifest['parts'])} parts)")
    streams = manifest["streams"]
    return {"file": str(target), "bytes": size, "created_at": manifest["created_at"],
            "took_s": round(time.monotonic() - began, 2), "streams": len(streams),
            "messages": sum(s["messages"] for s in streams), "parts": len(manifest["parts"])}


def _take(stack: Stack, live: Running, staging: Path, report: Report) -> dict[str, Any]:
    """The parts into ``staging``, in the order the module's docstring gives; the manifest."""
    positions = asyncio.run(_bus(stack, _positions))
    report(f"nats: positions of {sum(len(c) for c in positions.values())} consumers taken")
    report("postgres: dumping every service's schema...")
    _run([*_pg("pg_dump", live.ports["postgres"]), "--format=custom", "--serializable-deferrable",
          "--file", str(staging / "postgres.dump"), DATABASE], password=database_password(stack.files))
    report(f"postgres: dumped ({(staging / 'postgres.dump').stat().st_size} bytes)")
    sqlite_copy(live.temporal_db, staging / "temporal.db")
    report("temporal: database copied")
    streams = _snapshot_bus(stack, staging / "nats", report)
    _copy_home(live.home, staging / "home")
    copy_files(POLICY_DIR, staging / "policies")
    return {"format": FORMAT, "version": VERSION, "created_at": datetime.now(UTC).isoformat(),
            "home": str(live.home), "stack": live.stack,
            "temporal_db": str(live.temporal_db.relative_to(live.home)),
            "streams": streams, "consumer_positions": positions}


async def _bus(stack: Stack, work: Callable[[NATS], Awaitable[T]]) -> T:
    nc = await connect_bus(stack)
    try:
        return await work(nc)
    finally:
        await nc.close()


async def _positions(nc: NATS) -> dict[str, dict[str, Any]]:
    """Every stream's durable consumers: config and ack floor."""
    return {s["config"]["name"]: await jetstream_backup.positions(nc, s["config"]["name"])
            for s in await jetstream_backup.streams(nc)}


def _snapshot_bus(stack: Stack, folder: Path, report: Report) -> list[dict[str, Any]]:
    """Each stream to ``folder`` (``<name>.tar.s2`` and ``<name>.json``); what each held."""
    folder.mkdir(parents=True)
    return asyncio.run(_snapshot_streams(stack, folder, report))


async def _snapshot_streams(stack: Stack, folder: Path, report: Report) -> list[dict[str, Any]]:
    nc = await connect_bus(stack)
    try:
        found = [s["config"] for s in await jetstream_backup.streams(nc)]
        report(f"nats: snapshotting {len(found)} streams...")
        return [await _snapshot_stream(nc, config, folder, report) for config in found
                if _on_disk(config, report)]
    finally:
        await nc.close()


def _on_disk(config: dict[str, Any], report: Report) -> bool:
    if config.get("storage") == "memory":  # the server cannot snapshot it; none of the platform's is
        report(f"nats: stream {config['name']} is kept in memory and is not backed up")
        return False
    return True


async def _snapshot_stream(nc: NATS, config: dict[str, Any], folder: Path, report: Report) -> dict[str, Any]:
    request, data = await jetstream_backup.snapshot(nc, config["name"])
    await asyncio.to_thread(_write_stream, folder, request, data)
    messages = int(request["state"].get("messages", 0))
    report(f"nats: {config['name']}: {messages} messages, {len(data)} bytes")
    return {"name": config["name"], "messages": messages,
            "consumers": int(request["state"].get("consumer_count", 0))}


def _write_stream(folder: Path, request: dict[str, Any], data: bytes) -> None:
    name = request["config"]["name"]
    (folder / f"{name}.json").write_text(json.dumps(request, indent=2))
    (folder / f"{name}.tar.s2").write_bytes(data)


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live sqlite database (its writer keeps running)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source, timeout=30)) as live, closing(sqlite3.connect(target)) as copy:
        live.backup(copy)


def _copy_home(home: Path, staging: Path) -> None:
    for name in HOME_FILES:
        if (home / name).exists():
            copy_files(home / name, staging / name)
    for name in HOME_DATABASES:
        if (home / name).is_file():
            sqlite_copy(home / name, staging / name)


def restore(archive: Path, home: Path, *, free_ports: bool, report: Report) -> dict[str, Any]:
    """Bring the platform of ``archive`` back in ``home``, which must be empty: the
    infrastructure, then its data, then the services. A summary, with the seconds it took."""
    home = home.resolve()
    if home.exists() and (not home.is_dir() or any(home.iterdir())):
        raise HomeNotEmpty(f"{home} is not empty: a restore only fills an empty home, so that "
                          "nothing of another platform mixes in; choose a new home (--home or "
                          "AICLOUD_HOME)")
    began = time.monotonic()
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aicloud-restore-", dir=home.parent) as tmp:
        staging = Path(tmp)
        manifest = unpack(archive.resolve(), staging)
        report(f"archive verified: {len(manifest['parts'])} parts, made {manifest['created_at']} "
               f"from {manifest['home']}")
        _place_files(staging, home, manifest, report)
        stack, layout = Stack(home), manifest["stack"]
        stack.up(free_ports=free_ports, report=report, engine=layout["engine"],
                 nats_nodes=layout["nats_nodes"],
                 before_services=lambda ports: _fill(stack, staging, manifest, ports, report))
    took = time.monotonic() - began
    report(f"restored in {took:.1f}s")
    return {"home": str(home), "from": str(archive), "backup_created_at": manifest["created_at"],
            "took_s": round(took, 2), "streams": len(manifest["streams"]),
            "components": len(stack.read_state())}


def _place_files(staging: Path, home: Path, manifest: dict[str, Any], report: Report) -> None:
    """Files before anything starts: Temporal opens its database as it starts."""
    copy_files(staging / "home", home)
    copy_files(staging / "temporal.db", home / manifest["temporal_db"])
    report("files: temporal's database, job folders, artifacts, MLflow and keys in place")
    if manifest["home"] != str(home):
        report(f"files: rows name artifacts and MLflow runs by path under {manifest['home']}: restore "
               "there (once it is gone) for those links to resolve")
    theirs = staging / "policies"
    changed = sorted(str(p.relative_to(theirs)) for p in theirs.rglob("*") if p.is_file() and not (
        (POLICY_DIR / p.relative_to(theirs)).is_file()
        and filecmp.cmp(p, POLICY_DIR / p.relative_to(theirs), shallow=False)))
    if changed:
        copy_files(theirs, home / RESTORED_POLICIES)
        report(f"policies: {', '.join(changed)} differ from this checkout's {POLICY_DIR}; the stack "
               f"runs this checkout's, the backup's are in {home / RESTORED_POLICIES}")


def _fill(stack: Stack, staging: Path, manifest: dict[str, Any], ports: Ports, report: Report) -> None:
    report("postgres: restoring every service's schema...")
    _run([*_pg("pg_restore", ports["postgres"]), "--exit-on-error", "--no-owner",
          "--dbname", DATABASE, str(staging / "postgres.dump")], password=database_password(stack.files))
    report("postgres: restored")
    asyncio.run(_restore_bus(stack, staging / "nats", manifest, report))


async def _restore_bus(stack: Stack, folder: Path, manifest: dict[str, Any], report: Report) -> None:
    nc = await connect_bus(stack)
    try:
        for stream in manifest["streams"]:
            request, data = await asyncio.to_thread(_read_stream, folder, stream["name"])
            state = await jetstream_backup.restore(nc, request, data)
            report(f"nats: {stream['name']}: {state.get('messages', 0)} messages restored")
        moved = await _rewind(nc, manifest["consumer_positions"])
        report(f"nats: {moved} consumer(s) moved back to where they stood when the backup began "
               "(what they get again, their inboxes drop)")
    finally:
        await nc.close()


async def _rewind(nc: NATS, recorded: dict[str, dict[str, Any]]) -> int:
    """Move each durable consumer that went on after its position was taken back to it."""
    moved = 0
    for stream, consumers in recorded.items():
        now = await jetstream_backup.positions(nc, stream)
        for name, then in consumers.items():
            if name in now and now[name]["ack_floor"] > then["ack_floor"]:
                await jetstream_backup.rewind(nc, stream, name, config=now[name]["config"],
                                              ack_floor=then["ack_floor"])
                moved += 1
    return moved


def _read_stream(folder: Path, name: str) -> tuple[dict[str, Any], bytes]:
    return json.loads((folder / f"{name}.json").read_text()), (folder / f"{name}.tar.s2").read_bytes()


def _pg(tool: str, port: int) -> list[str]:
    return [str(postgres_bin_dir() / tool), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "--no-password"]


def _run(argv: list[str], *, password: str | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env=postgres_client_env(password))
    if done.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[-800:]}")
    return done.stdout.strip()
