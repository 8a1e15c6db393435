"""meshlib_flask's public surface is what __all__ says; this pins it so changes are deliberate."""

from __future__ import annotations

import meshlib_flask

EXPECTED = ["MeshExtension", "client", "current_mesh"]


def test_all_is_pinned_and_importable() -> None:
    assert sorted(meshlib_flask.__all__) == sorted(EXPECTED)
    for name in meshlib_flask.__all__:
        assert getattr(meshlib_flask, name) is not None
