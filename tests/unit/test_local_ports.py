"""Ports for a stack started with --free-ports: distinct, bindable, and outside the kernel's
ephemeral range (where an outgoing connection could take one before its server binds it)."""

from __future__ import annotations

import socket

import pytest

from aicloud.local import servers
from aicloud.local.servers import free_port


def ephemeral_range() -> range:
    low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    return range(int(low), int(high) + 1)


def test_free_ports_are_distinct_bindable_and_not_ephemeral() -> None:
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == 60
    assert not set(ports) & set(ephemeral_range())
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        taken.listen()
        # a three-port range, one of them busy: the other two come out, then the fallback
        monkeypatch.setattr(servers, "_PICK_FROM", range(busy - 1, busy + 2))
        monkeypatch.setattr(servers, "_HANDED", set())
        picked = [free_port() for _ in range(3)]
    assert sorted(picked[:2]) == [busy - 1, busy + 1]
    assert picked[2] not in (busy - 1, busy, busy + 1)
