"""The verified identity of the caller of the request being served."""

from __future__ import annotations

from contextvars import ContextVar

from .identity import PeerIdentity

__all__ = ["current_peer"]

_peer: ContextVar[PeerIdentity | None] = ContextVar("meshlib_peer", default=None)


def current_peer() -> PeerIdentity | None:
    """Who is calling (from the verified peer certificate), or None for plaintext callers."""
    return _peer.get()
