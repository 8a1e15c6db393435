"""Listening sockets, made the same way for the config service and every served port."""

from __future__ import annotations

import errno
import os
import random
import socket
import threading

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

    Chosen outside the kernel's ephemeral range: a port from ``bind(host, 0)`` is one the
    kernel also hands out as the source port of outgoing connections, and one of those taking
    it between this call and the other process's bind made etcd fail with "address already in
    use". Outside that range only an explicit bind can collide, which the test bind here rules
    out for now; a port is never handed out twice by one process."""
    ranges = _unassigned_ranges()
    if ranges:
        weights = [high - low for low, high in ranges]
        for _ in range(200):
            low, high = _random.choices(ranges, weights)[0]
            port = _random.randrange(low, high)
            with _lock:
                if port in _handed_out:
                    continue
                try:
                    bind(host, port).close()
                except OSError as exc:
                    if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                        continue
                    raise  # not this port's fault (a bad host): no other port would do
                _handed_out.add(port)
                return port
    sock = bind(host, 0)  # nothing free outside the ephemeral range: let the kernel choose
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


_random = random.SystemRandom()  # picks a port, not a secret; also right after a fork
_lock = threading.Lock()
_handed_out: set[int] = set()


def _unassigned_ranges() -> list[tuple[int, int]]:
    """Ports the kernel never picks by itself: from 10000 up to its ephemeral range (Linux's
    ``ip_local_port_range``; 32768–60999 by default, where the file is absent) and above it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            low, high = (int(part) for part in ranges.read().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    below, above = (10000, low), (high + 1, 65536)
    return [(start, end) for start, end in (below, above) if end - start >= 100]
