"""JetStream stream snapshots and restores over the server's own API (nats-py has no helper).

The protocol, as nats-server's ``jetstream_api.go`` serves it and ``jsm.go``'s
``snapshots.go`` (behind ``nats stream backup``/``restore``) speaks it:

- snapshot: a request to ``$JS.API.STREAM.SNAPSHOT.<stream>`` naming a ``deliver_subject``
  answers ``{"config", "state"}``; the server then sends the stream as an s2-compressed tar in
  chunks to that subject, each with a reply subject: answering it is the flow-control ack that
  lets the next chunks out (no ack for 5 s ends the snapshot). An empty message with the
  status header ``204`` is the end; any other status (408, 500) is a failure.
- restore: a request to ``$JS.API.STREAM.RESTORE.<stream>`` with that ``{"config", "state"}``
  answers a ``deliver_subject``; each chunk goes there as a request (the empty answer is the
  ack) and an empty request ends the upload, answered by a stream-create response once the
  server has rebuilt the stream. The stream must not exist yet.
"""

from __future__ import annotations

import json
from typing import Any

from nats.aio.client import Client as NATS

SNAPSHOT_API = "$JS.API.STREAM.SNAPSHOT.{}"
RESTORE_API = "$JS.API.STREAM.RESTORE.{}"
LIST_API = "$JS.API.STREAM.LIST"
CONSUMERS_API = "$JS.API.CONSUMER.LIST.{}"
DELETE_API = "$JS.API.CONSUMER.DELETE.{}.{}"
CREATE_API = "$JS.API.CONSUMER.CREATE.{}.{}"
CHUNK = 128 * 1024  # what the server sends per message (jsm.go's default too)
UPLOAD_CHUNK = 64 * 1024  # what we send per restore request (as jsm.go does)
IDLE_S = 10.0  # the server gives up after 5 s without an ack; we after 10 s without a chunk


class SnapshotError(RuntimeError):
    """The server refused or broke off a snapshot or a restore; the message says why."""


async def api(nc: NATS, subject: str, body: dict[str, Any], *, wait_s: float = 10.0) -> dict[str, Any]:
    """One JetStream API call; its ``error`` raised as a ``SnapshotError``."""
    answer = await nc.request(subject, json.dumps(body).encode(), timeout=wait_s)
    reply: dict[str, Any] = json.loads(answer.data) if answer.data else {}
    if "error" in reply:
        error = reply["error"]
        raise SnapshotError(f"{subject}: {error.get('description', error)} (code {error.get('err_code')})")
    return reply


async def streams(nc: NATS) -> list[dict[str, Any]]:
    """Every stream's info (config and state), all pages."""
    found: list[dict[str, Any]] = []
    while True:
        page = await api(nc, LIST_API, {"offset": len(found)})
        found += page.get("streams") or []
        if not page.get("streams") or len(found) >= int(page.get("total", 0)):
            return found


async def positions(nc: NATS, stream: str) -> dict[str, dict[str, Any]]:
    """Each durable consumer of ``stream``: its ``config`` and ``ack_floor``, the stream
    sequence up to which it has acknowledged every message."""
    found: dict[str, dict[str, Any]] = {}
    seen = 0
    while True:
        page = await api(nc, CONSUMERS_API.format(stream), {"offset": seen})
        infos = page.get("consumers") or []
        seen += len(infos)
        found |= {info["name"]: {"config": info["config"], "ack_floor": int(info["ack_floor"]["stream_seq"])}
                  for info in infos if info["config"].get("durable_name")}
        if not infos or seen >= int(page.get("total", 0)):
            return found


async def rewind(nc: NATS, stream: str, name: str, *, config: dict[str, Any], ack_floor: int) -> None:
    """Make a durable consumer deliver again everything after ``ack_floor``: it is made anew
    (a consumer's position cannot be moved back in place)."""
    await api(nc, DELETE_API.format(stream, name), {})
    await api(nc, CREATE_API.format(stream, name),
              {"stream_name": stream, "config": restart_config(config, ack_floor)})


def restart_config(config: dict[str, Any], ack_floor: int) -> dict[str, Any]:
    """A consumer's own config, starting after ``ack_floor``; without the metadata the server
    keeps for itself (``_nats.*``), which it sets anew."""
    metadata = {k: v for k, v in (config.get("metadata") or {}).items() if not k.startswith("_nats")}
    again = {k: v for k, v in config.items() if k not in ("opt_start_time", "metadata")}
    return again | {"deliver_policy": "by_start_sequence", "opt_start_seq": ack_floor + 1} | (
        {"metadata": metadata} if metadata else {})


async def snapshot(nc: NATS, stream: str) -> tuple[dict[str, Any], bytes]:
    """``stream`` with its consumers' state: the restore request (its config and state) and
    the server's s2 tar. One stream is held in memory (a local stack's are small)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=256 * 1024 * 1024)
    try:
        reply = await api(nc, SNAPSHOT_API.format(stream),
                          {"deliver_subject": inbox, "no_consumers": False, "chunk_size": CHUNK})
        data = await _receive(nc, sub)
    finally:
        await sub.unsubscribe()
    return {"config": reply["config"], "state": reply["state"]}, data


async def _receive(nc: NATS, sub: Any) -> bytes:
    """Chunks until the end-of-snapshot status; each chunk acked at once."""
    data = bytearray()
    while True:
        try:
            msg = await sub.next_msg(timeout=IDLE_S)
        except TimeoutError:
            raise SnapshotError(f"no snapshot chunk for {IDLE_S:.0f}s after {len(data)} bytes") from None
        if not msg.data:
            status = (msg.headers or {}).get("Status", "")
            if status and status != "204":
                why = (msg.headers or {}).get("Description", "")
                raise SnapshotError(f"the server ended the snapshot: {status} {why}".strip())
            return bytes(data)
        if msg.reply:  # flow control: the server sends on as chunks are acked
            await nc.publish(msg.reply, b"")
        data += msg.data


async def restore(nc: NATS, request: dict[str, Any], data: bytes) -> dict[str, Any]:
    """Create a stream from its snapshot (``request``: its config and state; it must not
    exist yet); the stream's state once the server has rebuilt it."""
    stream = request["config"]["name"]
    upload = (await api(nc, RESTORE_API.format(stream), request))["deliver_subject"]
    for at in range(0, len(data), UPLOAD_CHUNK):
        answer = await nc.request(upload, data[at:at + UPLOAD_CHUNK], timeout=IDLE_S)
        if answer.data:  # an ack is empty; anything else is the server giving up
            raise SnapshotError(f"restore of {stream} failed after {at} bytes: {answer.data[:300]!r}")
    done = json.loads((await nc.request(upload, b"", timeout=300)).data)
    if "error" in done:
        raise SnapshotError(f"restore of {stream} failed: {done['error'].get('description', done['error'])}")
    state: dict[str, Any] = done.get("state", {})
    return state
