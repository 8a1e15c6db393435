"""meshlib_fastapi's public surface is what __all__ says; this pins it so changes are deliberate."""

from __future__ import annotations

import meshlib_fastapi

EXPECTED = ["MeshClient", "Peer", "RequiredPeer", "get_mesh", "instrument", "mesh_client", "peer_identity"]


def test_all_is_pinned_and_importable() -> None:
    assert sorted(meshlib_fastapi.__all__) == sorted(EXPECTED)
    for name in meshlib_fastapi.__all__:
        assert getattr(meshlib_fastapi, name) is not None
