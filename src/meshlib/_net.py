"""Listening sockets, made the same way for the config service and every served port."""

from __future__ import annotations

import os
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
    """A port nothing listens on right now (for servers started in other processes)."""
    sock = bind(host, 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()
