"""Sandboxes for teams: create (from the warm pool when one is ready), exec, files, delete.

Every sandbox has a TTL, an idle limit and a hard lifetime; a reaper deletes the ones past any
of them, and a box that died is deleted as ``died``. On start the runtime kills whatever a
previous run left (a crash leaves boxes running) and records them deleted with
``runtime_restarted``, so no sandbox outlives the runtime that owned it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from contracts import SandboxCommandFinished, SandboxCreated, SandboxDeleted, SandboxEgress
from contracts.envelope import Event
from services.agent_runtime import repo
from services.agent_runtime.egress import Decision, EgressProxy
from services.agent_runtime.errors import (
    BadPath,
    FileTooLarge,
    SandboxGone,
    SandboxNotFound,
    TemplateUnavailable,
    TooManySandboxes,
    UnknownTemplate,
    check_command,
)
from services.agent_runtime.pool import Uids, WarmPool, new_id
from services.agent_runtime.templates import Prepared, Template, prepare
from services.kit.db import Database
from services.kit.outbox import Outbox
from services.kit.sandbox import Box, BoxGone, Sandbox, reap_orphans, start_box

log = structlog.get_logger(__name__)
EGRESS_PORT = 3128


@dataclass
class Live:
    box: Box
    team: str
    template: Prepared
    uid: int
    created_at: datetime
    expires_at: datetime
    deadline: datetime
    allow_hosts: tuple[str, ...] = ()
    pooled: bool = False
    busy: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def public(self) -> dict[str, Any]:
        return {"sandbox_id": self.box.box_id, "team": self.team, "template": self.template.name,
                "status": "running", "isolation": str(self.box.isolation), "pooled": self.pooled,
                "created_at": self.created_at, "expires_at": self.expires_at, "deadline": self.deadline,
                "allow_hosts": list(self.allow_hosts), "limits": self.template.template.limits.model_dump()}


class Sandboxes:
    def __init__(self, *, sandbox: Sandbox, templates: dict[str, Template], root: Path, db: Database,
                 outbox: Outbox, source: str, max_per_team: int = 20, max_file_bytes: int = 10 << 20,
                 pools: bool = True, template_cache: Path | None = None) -> None:
        self.sandbox = sandbox
        self.templates: dict[str, Prepared] = {}
        self._configured = templates
        self._root = root
        self._cache = template_cache or root / "templates"
        self._use_pools = pools
        self.max_file_bytes = max_file_bytes
        self._ctl = root / "ctl"
        self._db, self._outbox, self._source = db, outbox, source
        self._max_per_team = max_per_team
        self._live: dict[str, Live] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()
        self._uids = Uids()
        self._uid_of: dict[str, int] = {}
        self._pools: dict[str, WarmPool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.egress: dict[str, EgressProxy] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.on_deleted: list[Any] = []

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Prepare the templates, kill what a previous run left, fill the warm pools."""
        for folder in (self._root, self._ctl, self._cache, self._root / "state"):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o711)
        for name, template in self._configured.items():
            self.templates[name] = await prepare(name, template, cache=self._cache)
        self._pools = {name: WarmPool(name, p.template.pool if self._use_pools else 0, self._starter(p))
                       for name, p in self.templates.items() if p.error is None}
        killed = await reap_orphans(self.sandbox, self._ctl)
        async with self._db.transaction() as session:
            for sandbox_id, team in await repo.orphaned(session):
                await self._outbox.add(session, self._event(SandboxDeleted, team, sandbox_id=sandbox_id,
                                                            reason="runtime_restarted"))
        if killed:
            log.warning("sandboxes.reconciled", killed=len(killed))
        for pool in self._pools.values():
            pool.run()
        self._reaper = asyncio.create_task(self._reap_forever(), name="sandbox-reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for pool in self._pools.values():
            for box in await pool.close():
                await self._destroy(box)
        for sandbox_id, live in list(self._live.items()):
            await self.delete(team=live.team, sandbox_id=sandbox_id, reason="runtime_stopped")
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task

    # -- the API ----------------------------------------------------------------------------
    async def create(self, *, team: str, template: str, ttl_s: int | None = None,
                     allow_hosts: tuple[str, ...] = (), sandbox_id: str | None = None) -> Live:
        prepared = self._template(template)
        if sum(1 for live in self._live.values() if live.team == team) >= self._max_per_team:
            raise TooManySandboxes(f"team {team} has {self._max_per_team} sandboxes, the most it may have:"
                                   " delete one (aicloud sandboxes delete ID) or wait for one to expire")
        started = time.perf_counter()
        pool = self._pools.get(template)
        box = pool.take() if pool is not None and sandbox_id is None else None
        pooled = box is not None
        if box is None:
            box = await self._start(prepared, sandbox_id or new_id())
        now = datetime.now(UTC)
        t = prepared.template
        deadline = now + timedelta(seconds=t.max_lifetime_s)
        live = Live(box=box, team=team, template=prepared, uid=self._uid_of[box.box_id], created_at=now,
                    expires_at=min(now + timedelta(seconds=ttl_s or t.ttl_s), deadline), deadline=deadline,
                    allow_hosts=allow_hosts, pooled=pooled)
        self._live[box.box_id] = live
        if allow_hosts:
            proxy = EgressProxy(box, allow_hosts, lambda d: self._spawn(self._egress_event(live, d)))
            proxy.start()
            self.egress[box.box_id] = proxy
        ready_ms = round((time.perf_counter() - started) * 1000, 2)
        async with self._db.transaction() as session:
            await repo.record_running(session, sandbox_id=box.box_id, team=team, template=template,
                                      isolation=str(box.isolation), expires_at=live.expires_at,
                                      deadline=deadline, allow_hosts=list(allow_hosts))
            await self._outbox.add(session, self._event(
                SandboxCreated, team, sandbox_id=box.box_id, template=template, isolation=str(box.isolation),
                pooled=pooled, ready_ms=ready_ms, expires_at=live.expires_at))
        log.info("sandbox.created", sandbox_id=box.box_id, team=team, template=template, pooled=pooled,
                 ready_ms=ready_ms)
        return live

    async def exec(self, *, team: str, sandbox_id: str, argv: list[str], timeout_s: float | None = None,
                   stdin: bytes | None = None,
                   env: dict[str, str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Run a command; yields ``{"fd", "data"}`` chunks, then ``{"exit", "limit", ...}``."""
        live = await self.get(team=team, sandbox_id=sandbox_id)
        check_command(argv)
        limits = live.template.template.limits
        request = {
            "op": "exec", "argv": argv, "timeout_s": min(timeout_s or limits.wall_s, limits.wall_s),
            "env": {**live.template.command_env(egress_port=EGRESS_PORT if live.allow_hosts else None),
                    **(env or {})},
            "limits": [["RLIMIT_AS", limits.memory_mb << 20], ["RLIMIT_CPU", limits.cpu_s]],
            "pids": limits.pids, "max_output": limits.output_kb << 10,
            "stdin": base64.b64encode(stdin).decode() if stdin else None,
        }
        live.busy += 1
        live.touch()
        try:
            async for message in live.box.request(request):
                if "exit" in message:
                    self._spawn(self._command_finished(live, argv[0], message))
                yield message
        except BoxGone:
            raise SandboxGone(f"sandbox {sandbox_id} died while the command ran") from None
        finally:
            live.busy -= 1
            live.touch()

    async def put_file(self, *, team: str, sandbox_id: str, path: str, data: bytes) -> dict[str, Any]:
        if len(data) > self.max_file_bytes:
            raise FileTooLarge(f"the file is {len(data)} bytes; the limit is {self.max_file_bytes}")
        live = await self.get(team=team, sandbox_id=sandbox_id)
        live.touch()
        answer = await live.box.put(path, data)
        return self._answer(answer, path)

    async def get_file(self, *, team: str, sandbox_id: str, path: str) -> bytes:
        live = await self.get(team=team, sandbox_id=sandbox_id)
        live.touch()
        try:
            return await live.box.get(path, max_bytes=self.max_file_bytes)
        except ValueError as exc:
            raise (FileTooLarge if "file_too_large" in str(exc) else BadPath)(_clean(str(exc))) from None

    async def list_files(self, *, team: str, sandbox_id: str, path: str = ".") -> list[dict[str, Any]]:
        live = await self.get(team=team, sandbox_id=sandbox_id)
        live.touch()
        entries: list[dict[str, Any]] = self._answer(await live.box.call({"op": "list", "path": path}),
                                                     path)["entries"]
        return entries

    async def delete(self, *, team: str, sandbox_id: str, reason: str = "deleted") -> None:
        live = await self.get(team=team, sandbox_id=sandbox_id)
        self._live.pop(sandbox_id, None)
        self._gone[sandbox_id] = reason
        while len(self._gone) > 10_000:
            self._gone.popitem(last=False)
        if (proxy := self.egress.pop(sandbox_id, None)) is not None:
            await proxy.close()
        await self._destroy(live.box)
        async with self._db.transaction() as session:
            if await repo.record_deleted(session, sandbox_id=sandbox_id, reason=reason):
                await self._outbox.add(session, self._event(SandboxDeleted, team, sandbox_id=sandbox_id,
                                                            reason=reason))
        for hook in self.on_deleted:
            hook(sandbox_id)
        log.info("sandbox.deleted", sandbox_id=sandbox_id, team=team, reason=reason)

    async def get(self, *, team: str, sandbox_id: str) -> Live:
        live = self._live.get(sandbox_id)
        if live is not None and live.team == team:
            return live
        reason = self._gone.get(sandbox_id)
        if reason is None and live is None:
            async with self._db.transaction() as session:
                row = await repo.find(session, team=team, sandbox_id=sandbox_id)
            reason = row["reason"] if row and row["status"] == "deleted" else None
        if reason is not None and (live is None or live.team == team):
            raise SandboxGone(f"sandbox {sandbox_id} is gone ({reason}): create a new one")
        raise SandboxNotFound(f"no sandbox {sandbox_id} for team {team}")

    def list(self, *, team: str) -> list[Live]:
        return [live for live in self._live.values() if live.team == team]

    def pool_status(self) -> dict[str, int]:
        return {name: pool.ready for name, pool in self._pools.items()}

    # -- inside -----------------------------------------------------------------------------
    def _template(self, name: str) -> Prepared:
        prepared = self.templates.get(name)
        if prepared is None:
            known = ", ".join(sorted(self.templates))
            raise UnknownTemplate(f"unknown template {name!r}: use one of {known}")
        if prepared.error is not None:
            raise TemplateUnavailable(f"template {name!r} is unavailable here: {prepared.error}")
        return prepared

    def _starter(self, prepared: Prepared) -> Any:
        return lambda box_id: self._start(prepared, box_id)

    async def _start(self, prepared: Prepared, box_id: str) -> Box:
        uid = self._uids.take()
        try:
            box = await start_box(self.sandbox, box_id=box_id, ctl_root=self._ctl,
                                  spec=prepared.box_spec(uid=uid, egress_port=EGRESS_PORT))
        except BaseException:
            self._uids.give_back(uid)
            raise
        self._uid_of[box_id] = uid
        return box

    async def _destroy(self, box: Box) -> None:
        await box.destroy()
        self._uids.give_back(self._uid_of.pop(box.box_id, -1))

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now, mono = datetime.now(UTC), time.monotonic()
            for sandbox_id, live in list(self._live.items()):
                idle = not live.busy and mono - live.last_used > live.template.template.idle_s
                reason = ("died" if not live.box.alive() else "lifetime" if now >= live.deadline
                          else "expired" if now >= live.expires_at else "idle" if idle else None)
                if reason is not None:
                    with contextlib.suppress(SandboxNotFound, SandboxGone):
                        await self.delete(team=live.team, sandbox_id=sandbox_id, reason=reason)

    async def _command_finished(self, live: Live, program: str, message: dict[str, Any]) -> None:
        async with self._db.transaction() as session:
            await self._outbox.add(session, self._event(
                SandboxCommandFinished, live.team, sandbox_id=live.box.box_id, command=program[:200],
                exit_code=message["exit"], limit=message.get("limit"),
                duration_ms=message.get("duration_ms", 0.0)))

    async def _egress_event(self, live: Live, decision: Decision) -> None:
        async with self._db.transaction() as session:
            await self._outbox.add(session, self._event(
                SandboxEgress, live.team, sandbox_id=live.box.box_id, host=decision.host[:253],
                port=decision.port, allowed=decision.allowed))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, cls: type[Event], team: str, **fields: Any) -> Event:
        return cls(source=self._source, tenant=team, **fields)

    @staticmethod
    def _answer(answer: dict[str, Any], path: str) -> dict[str, Any]:
        if not answer.get("ok"):
            raise BadPath(_clean(answer.get("error", f"cannot use {path!r}")))
        return answer


def _clean(error: str) -> str:
    """The daemon's message without its exception class prefix."""
    return error.split(": ", 1)[1] if error.split(": ", 1)[0].endswith("Error") else error
