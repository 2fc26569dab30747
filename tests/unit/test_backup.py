"""The backup archive (manifest, sizes, sha256) and what a restore refuses before it starts
anything; the servers' part is tests/e2e/test_backup_restore.py."""

from __future__ import annotations

import io
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from aicloud.local import archive
from aicloud.local.archive import ArchiveError, pack, parts, unpack
from aicloud.local.backup import HomeNotEmpty, Running, restore, sqlite_copy
from aicloud.local.jetstream_backup import restart_config

pytestmark = pytest.mark.unit


def staged(root: Path) -> Path:
    staging = root / "staging"
    files = {"postgres.dump": b"PGDMP", "temporal.db": b"sqlite", "nats/JOBS.tar.s2": b"s2",
             "nats/JOBS.json": b"{}", "home/keys.json": b"{}", "policies/org.yaml": b"teams"}
    for name, body in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(body)
    return staging


def manifest(staging: Path, **extra: object) -> dict[str, object]:
    return {"format": archive.FORMAT, "version": archive.VERSION, "parts": parts(staging), **extra}


def test_an_archive_unpacks_to_its_parts_each_checked_against_the_manifest(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    target = tmp_path / "backup.tar.gz"
    size = pack(staging, manifest(staging), target)
    assert size == target.stat().st_size
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # it holds keys
    with tarfile.open(target) as tar:
        assert tar.getnames()[0] == archive.MANIFEST  # read first, before the parts
    found = unpack(target, tmp_path / "out")
    assert {p["kind"] for p in found["parts"]} == {"postgres", "temporal", "nats", "home", "policies"}
    assert (tmp_path / "out" / "nats" / "JOBS.tar.s2").read_bytes() == b"s2"


def test_a_damaged_part_is_refused_before_anything_starts(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    listed = manifest(staging)
    (staging / "postgres.dump").write_bytes(b"PGDMX")  # same size, other bytes
    pack(staging, listed, tmp_path / "backup.tar.gz")
    with pytest.raises(ArchiveError, match=r"postgres\.dump is damaged"):
        unpack(tmp_path / "backup.tar.gz", tmp_path / "out")


def test_an_archive_of_another_format_or_version_is_refused(tmp_path: Path) -> None:
    staging = staged(tmp_path)
    pack(staging, manifest(staging, version=99), tmp_path / "backup.tar.gz")
    with pytest.raises(ArchiveError, match="version 1"):
        unpack(tmp_path / "backup.tar.gz", tmp_path / "out")
    (tmp_path / "not.tar.gz").write_text("hello")
    with pytest.raises(ArchiveError, match="not a readable backup archive"):
        unpack(tmp_path / "not.tar.gz", tmp_path / "out2")


def test_an_archive_cannot_write_outside_where_it_is_unpacked(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ArchiveError):
        unpack(evil, tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_restore_refuses_a_home_that_has_state_and_starts_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "run").mkdir(parents=True)
    with pytest.raises(HomeNotEmpty, match="is not empty"):
        restore(tmp_path / "any.tar.gz", home, free_ports=True, report=lambda _: None)
    assert [p.name for p in home.iterdir()] == ["run"]


def test_restore_into_an_empty_home_still_checks_the_archive_first(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    with pytest.raises(ArchiveError, match="no backup archive"):
        restore(tmp_path / "missing.tar.gz", tmp_path / "home", free_ports=True, report=lambda _: None)


def test_the_stack_is_started_again_as_it_ran() -> None:
    def running(*names: str) -> Running:
        return Running(Path("/h"), {}, list(names), Path("/h/data/temporal/temporal.db"))

    assert running("nats", "postgres", "temporal", "catalog").stack["nats_nodes"] == 1
    three = running("nats", "nats-2", "nats-3", "postgres", "ray", "catalog").stack
    assert (three["nats_nodes"], three["engine"]) == (3, "ray")


def test_a_live_sqlite_database_is_copied_whole(tmp_path: Path) -> None:
    live = sqlite3.connect(tmp_path / "live.db")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("CREATE TABLE t (n INTEGER)")
    live.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)])
    live.commit()  # still open, its WAL not checkpointed: the copy must include it
    sqlite_copy(tmp_path / "live.db", tmp_path / "copy" / "copy.db")
    copy = sqlite3.connect(tmp_path / "copy" / "copy.db")
    assert copy.execute("SELECT count(*) FROM t").fetchone() == (100,)
    copy.close()
    live.close()


def test_a_consumer_moved_back_keeps_its_config_and_starts_after_its_recorded_floor() -> None:
    config = {"name": "quota-jobs", "durable_name": "quota-jobs", "filter_subject": "aicloud.jobs.>",
              "deliver_policy": "all", "ack_policy": "explicit", "max_ack_pending": 1000,
              "metadata": {"_nats.req.level": "0", "owner": "quota"}}
    again = restart_config(config, ack_floor=41)
    assert again["deliver_policy"] == "by_start_sequence" and again["opt_start_seq"] == 42
    assert {k: again[k] for k in ("name", "durable_name", "filter_subject", "max_ack_pending")} == {
        k: config[k] for k in ("name", "durable_name", "filter_subject", "max_ack_pending")}
    assert again["metadata"] == {"owner": "quota"}  # the server's own keys it sets anew
