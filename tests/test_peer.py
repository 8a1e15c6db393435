"""The caller's identity, parsed from a verified certificate's SPIFFE ID."""

from __future__ import annotations

from meshlib.peer import PeerIdentity, peer_identity


def test_an_identity_is_parsed_once_per_spiffe_id_and_shared() -> None:
    spiffe = "spiffe://cluster.local/ns/shop/sa/frontend"
    first = peer_identity(spiffe)
    assert first == PeerIdentity(
        "spiffe://cluster.local/ns/shop/sa/frontend", "cluster.local", "shop", "frontend"
    )
    assert first is not None
    assert first.principal == "cluster.local/ns/shop/sa/frontend"
    assert peer_identity(spiffe) is first  # the next request of that caller: no parse


def test_what_is_not_istios_form_is_no_identity() -> None:
    for spiffe in (
        "spiffe://cluster.local/ns/shop",
        "spiffe://cluster.local/ns//sa/frontend",
        "spiffe:///ns/shop/sa/frontend",
        "https://cluster.local/ns/shop/sa/frontend",
        "spiffe://cluster.local/ns/shop/sa/frontend/extra",
    ):
        assert peer_identity(spiffe) is None, spiffe
