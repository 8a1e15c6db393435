"""Listening sockets, made the same way for the config service and every served port."""

from __future__ import annotations

import os
import random
import socket

__all__ = ["advertise_address", "bind", "free_port"]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP: asyncio only turns Nagle off (TCP_NODELAY) for sockets that
    # say so, and with proto 0 every response waited ~40 ms for the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


def advertise_address(host: str) -> str:
    """The address other workloads should use: ``MESH_ADVERTISE_ADDRESS``, the bound host,
    or (for a wildcard bind) this machine's address."""
    configured = os.environ.get("MESH_ADVERTISE_ADDRESS", "").strip()
    if configured:
        return configured
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        return host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now, for a server another process will bind.

    Chosen below the kernel's ephemeral range: a port from ``bind(host, 0)`` is one the kernel
    also hands out as the source port of outgoing connections, and one of those taking it
    between this call and the other process's bind made etcd fail with "address already in
    use". Below that range only an explicit bind can collide, which the test bind here rules
    out for now; a port is never handed out twice by one process."""
    low, high = _unassigned_range()
    for _ in range(200 if high > low else 0):
        port = _random.randrange(low, high)
        if port in _handed_out:
            continue
        try:
            bind(host, port).close()
        except OSError:
            continue
        _handed_out.add(port)
        return port
    sock = bind(host, 0)  # nothing free below the ephemeral range: let the kernel choose
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


_random = random.Random()  # picks a port, not a secret
_handed_out: set[int] = set()


def _unassigned_range() -> tuple[int, int]:
    """Ports the kernel never picks by itself: those between 10000 and its ephemeral range
    (Linux's ``ip_local_port_range``; 32768–60999 by default, where the file is absent)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return 10000, ephemeral_low
