"""Ports chosen for servers in other processes (etcd, config service replicas, examples)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from meshlib import _net
from meshlib._net import bind, free_port


def _ephemeral() -> range:
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    return range(low, high + 1)


def test_a_free_port_is_one_the_kernel_never_gives_an_outgoing_connection_and_never_repeats() -> None:
    # An outgoing connection's source port comes from the ephemeral range; a free port chosen
    # there was taken that way between choosing and etcd's bind ("address already in use").
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port >= 10000 and port not in _ephemeral() for port in ports)
    server = bind("127.0.0.1", ports[0])
    server.listen()
    try:
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=2) as client:
            assert client.getsockname()[1] in _ephemeral()
    finally:
        server.close()


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    listening = bind("127.0.0.1", free_port())
    listening.listen()
    taken = int(listening.getsockname()[1])
    try:
        monkeypatch.setattr(_net, "_unassigned_ranges", lambda: [(taken, taken + 1)])
        monkeypatch.setattr(_net, "_handed_out", set())
        port = free_port()  # the only candidate is busy: the kernel chooses instead
        assert port != taken
        assert port in _ephemeral()
    finally:
        listening.close()


def test_a_host_no_port_can_be_bound_on_is_an_error_at_once() -> None:
    with pytest.raises(OSError, match="assign requested address"):
        free_port("192.0.2.1")  # TEST-NET-1: not an address of this machine
