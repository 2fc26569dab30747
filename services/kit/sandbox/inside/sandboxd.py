"""sandboxd: the first process of an agent sandbox, and the only door into it.

It runs inside the sandbox (gVisor or bubblewrap) with the standard library only, listens on a
Unix socket in a folder bound in from the host (``runsc --host-uds=create`` lets the host
connect), and serves one JSON request per connection, answering with JSON lines:

  {"op": "ping"}                                  -> {"ok": true, "pid": ..}
  {"op": "exec", "argv": [..], "env": {..}, "timeout_s": s, "limits": [[name, value], ..],
   "max_output": n, "stdin": b64|null, "pids": n}  -> {"fd": 1|2, "data": b64} ... then
                                                     {"exit": code, "limit": reason|null, ..}
  {"op": "put", "path": p, "data": b64, "mode": m} -> {"ok": true, "size": n}
  {"op": "get", "path": p, "max_bytes": n}         -> {"ok": true, "data": b64}
  {"op": "list", "path": p}                        -> {"ok": true, "entries": [..]}

When a limit ends a command the exit line says which: ``timeout``, ``cpu_time``, ``pids``,
``output``, ``memory``, ``disk``, ``read_only`` or ``network``. The last four are read off the
command's own error (the kernel refused it and the program said so), the first four are
enforced here. With an egress port it also relays 127.0.0.1:3128 to the host's egress proxy
({"op": "egress"} parks a host connection for it), the only way out of a sandbox without a
network.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

CHUNK = 64 * 1024
ERROR_SIGNS = (
    ("memory", (b"MemoryError", b"Cannot allocate memory", b"bad_alloc", b"out of memory")),
    ("disk", (b"No space left on device", b"File too large", b"Disk quota exceeded")),
    ("read_only", (b"Read-only file system", b"Permission denied")),
    ("pids", (b"Resource temporarily unavailable", b"fork: retry")),
    ("network", (b"Network is unreachable", b"Temporary failure in name resolution",
                 b"Name or service not known", b"No address associated", b"No route to host",
                 b"Connection refused", b"Connection reset by peer")),
)


class Daemon:
    def __init__(self, ctl: str, workspace: str) -> None:
        self.ctl = ctl
        self.workspace = os.path.realpath(workspace)
        self.active: set[int] = set()
        self.lock = threading.Lock()
        self.parked: queue.Queue[tuple[socket.socket, threading.Event]] = queue.Queue()

    def serve(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(os.path.join(self.ctl, "sandboxd.sock"))
        server.listen(64)
        threading.Thread(target=self.reap_orphans, daemon=True).start()
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            try:
                request = json.loads(reader.readline())
                op = getattr(self, "op_" + str(request.get("op")), None)
                if op is None:
                    send(conn, {"ok": False, "error": f"unknown op {request.get('op')!r}"})
                    return
                op(conn, request)
            except Exception as exc:  # every failure is answered; the daemon lives on
                try:
                    send(conn, {"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                except OSError:
                    pass

    def op_egress(self, conn: socket.socket, request: dict) -> None:
        """Park the host's connection until a program inside connects out through it."""
        done = threading.Event()
        self.parked.put((conn, done))
        done.wait()

    def op_ping(self, conn: socket.socket, request: dict) -> None:
        send(conn, {"ok": True, "pid": os.getpid(), "uid": os.getuid()})

    def op_exec(self, conn: socket.socket, request: dict) -> None:
        limits = [(getattr(resource, name), int(value)) for name, value in request.get("limits", [])]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                request["argv"], cwd=request.get("cwd") or self.workspace, env=request.get("env") or {},
                stdin=subprocess.PIPE if request.get("stdin") else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            apply_limits(proc.pid, limits)
        except OSError as exc:
            send(conn, {"exit": 127, "limit": None, "error": f"{exc.strerror}: {request['argv'][0]}",
                        "duration_ms": 0.0})
            return
        with self.lock:
            self.active.add(proc.pid)
        if request.get("stdin"):
            stdin = base64.b64decode(request["stdin"])
            threading.Thread(target=feed, args=(proc, stdin), daemon=True).start()
        try:
            limit, tail, (status, usage) = self.pump(conn, proc, request)
        except OSError:  # the caller went away: the command goes with it
            kill_group(proc.pid)
            limit, tail, (status, usage) = "disconnected", b"", reap(proc)
        with self.lock:
            self.active.discard(proc.pid)
        code = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        if limit is None and code < 0 and -code in (signal.SIGXCPU, signal.SIGKILL) \
                and any(w == resource.RLIMIT_CPU and cpu >= v - 0.05 for w, v in limits):
            limit = "cpu_time"
        if limit is None and code != 0:
            limit = next((name for name, signs in ERROR_SIGNS if any(s in tail for s in signs)), None)
        send(conn, {"exit": code, "limit": limit, "cpu_s": round(cpu, 3), "max_rss_kb": usage.ru_maxrss,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2)})

    def pump(self, conn: socket.socket, proc: subprocess.Popen,
             request: dict) -> tuple[str | None, bytes, Any]:
        """Relay output until the command ends or a limit ends it: the limit, stderr's tail and
        the exit status with its resource usage."""
        deadline = time.monotonic() + float(request.get("timeout_s", 60))
        max_output, pids = int(request.get("max_output", 1 << 20)), request.get("pids")
        sel = selectors.DefaultSelector()
        for fd, pipe in ((1, proc.stdout), (2, proc.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe, selectors.EVENT_READ, fd)
        sent, tail, limit, exited_at, ended = 0, b"", None, None, None
        while sel.get_map():
            now = time.monotonic()
            if limit is None and now > deadline:
                limit = "timeout"
            elif limit is None and pids and count_processes() >= int(pids):
                limit = "pids"
            if limit is not None:
                kill_group(proc.pid)
            if exited_at is None and (ended := reap(proc, block=False)) is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 0.2:
                break  # a background child holds the pipe open: it lives on, unread
            for key, _ in sel.select(timeout=0.05):
                data = os.read(key.fileobj.fileno(), CHUNK)  # type: ignore[union-attr]
                if not data:
                    sel.unregister(key.fileobj)
                    continue
                if key.data == 2:
                    tail = (tail + data)[-4096:]
                if sent + len(data) > max_output:
                    data, limit = data[: max(0, max_output - sent)], limit or "output"
                    kill_group(proc.pid)
                sent += len(data)
                if data:
                    send(conn, {"fd": key.data, "data": base64.b64encode(data).decode()})
        if limit is not None:
            kill_group(proc.pid)
        return limit, tail, ended if exited_at is not None else reap(proc)

    def op_put(self, conn: socket.socket, request: dict) -> None:
        path = self.inside(request["path"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = base64.b64decode(request["data"])
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, int(request.get("mode", 0o644)))
        send(conn, {"ok": True, "size": len(data), "path": path})

    def op_get(self, conn: socket.socket, request: dict) -> None:
        path = self.inside(request["path"])
        size, max_bytes = os.path.getsize(path), int(request.get("max_bytes", 10 << 20))
        if size > max_bytes:
            send(conn, {"ok": False, "error": f"file_too_large: {size} bytes, the limit is {max_bytes}"})
            return
        with open(path, "rb") as f:
            send(conn, {"ok": True, "data": base64.b64encode(f.read()).decode(), "size": size})

    def op_list(self, conn: socket.socket, request: dict) -> None:
        path = self.inside(request.get("path") or ".")
        entries = []
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            entries.append({"name": entry.name, "dir": entry.is_dir(follow_symlinks=False),
                            "size": st.st_size})
        send(conn, {"ok": True, "entries": entries})

    def inside(self, path: str) -> str:
        """The path within the workspace; anything that leaves it is refused."""
        full = os.path.realpath(os.path.join(self.workspace, path))
        if full != self.workspace and not full.startswith(self.workspace + os.sep):
            raise ValueError(f"path {path!r} is outside the workspace")
        return full

    def reap_orphans(self) -> None:
        """As PID 1 the daemon inherits orphans; reap those that are not running commands."""
        while True:
            time.sleep(0.05)
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break
                with self.lock:
                    if info is None or info.si_pid in self.active:
                        break
                    os.waitpid(info.si_pid, os.WNOHANG)


def send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass


def kill_group(pid: int) -> None:
    """SIGKILL the command's process group until it is empty (a fork bomb races the first kill)."""
    for _ in range(100):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            return
        time.sleep(0.005)


def reap(proc: subprocess.Popen, *, block: bool = True) -> Any:
    """The command's exit status and rusage (Popen's own wait would lose the rusage)."""
    pid, status, usage = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def apply_limits(pid: int, limits: list[tuple[int, int]]) -> None:
    """Lower the command's limits to these values (the sandbox's own ceilings, set when it
    started, hold from the command's first instruction). Set right after the spawn rather than
    before exec: a preexec hook would force fork() over vfork(), which costs 20 ms in gVisor."""
    for which, value in limits:
        _, hard = resource.getrlimit(which)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        try:
            resource.prlimit(pid, which, (value, value))
        except ProcessLookupError:
            return


def count_processes() -> int:
    """Processes in this sandbox (its own pid namespace), the daemon excluded."""
    return sum(1 for name in os.listdir("/proc") if name.isdigit()) - 1


def relay_egress(daemon: Daemon, port: int) -> None:
    """127.0.0.1:``port`` inside, out through a connection the host parked with us: the
    sandbox cannot dial the host (it has no network, and may not open host sockets); the host
    dials in, and its proxy decides where each connection may go."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        client, _ = listener.accept()
        try:
            upstream, done = daemon.parked.get(timeout=3)
        except queue.Empty:  # no egress granted to this sandbox
            client.close()
            continue
        try:
            upstream.sendall(b"go\n")
        except OSError:
            client.close()
            done.set()
            continue
        threads = [threading.Thread(target=splice, args=pair, daemon=True)
                   for pair in ((client, upstream), (upstream, client))]
        for thread in threads:
            thread.start()
        threading.Thread(target=release, args=(threads, done), daemon=True).start()


def release(threads: list[threading.Thread], done: threading.Event) -> None:
    """Let the parked request end once both directions of its tunnel have."""
    for thread in threads:
        thread.join()
    done.set()


def splice(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(CHUNK):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        src.close()
        dst.close()


if __name__ == "__main__":
    ctl_dir, workspace_dir = sys.argv[1], sys.argv[2]
    daemon = Daemon(ctl_dir, workspace_dir)
    if len(sys.argv) > 3:
        threading.Thread(target=relay_egress, args=(daemon, int(sys.argv[3])), daemon=True).start()
    daemon.serve()
