"""Ports chosen for servers in other processes (etcd, config service replicas, examples)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meshlib import _net
from meshlib._net import bind, free_port


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_a_free_port_is_one_the_kernel_never_gives_an_outgoing_connection_and_never_repeats() -> None:
    # An outgoing connection's source port comes from the ephemeral range; a free port chosen
    # there was taken that way between choosing and etcd's bind ("address already in use").
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10000 <= port < _ephemeral_low() for port in ports)
    server = bind("127.0.0.1", ports[0])
    server.listen()
    try:
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=2) as client:
            assert client.getsockname()[1] >= _ephemeral_low()
    finally:
        server.close()


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    listening = bind("127.0.0.1", free_port())
    listening.listen()
    taken = int(listening.getsockname()[1])
    try:
        monkeypatch.setattr(_net, "_unassigned_range", lambda: (taken, taken + 1))
        monkeypatch.setattr(_net, "_handed_out", set())
        port = free_port()  # the only candidate is busy: the kernel chooses instead
        assert port != taken
        assert port >= _ephemeral_low()
    finally:
        listening.close()
