"""The CA key kept in etcd, encrypted with a passphrase every replica shares (--ca-key-passphrase-file)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshlib.controlplane.etcd_store import EtcdStore, parse_etcd_url
from meshlib.controlplane.server import ConfigServer
from meshlib.errors import MeshError
from tests.etcd import running_etcd

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    with running_etcd(tmp_path / "etcd") as url:
        yield url


def stored_ca(etcd: str) -> dict[str, str]:
    store = EtcdStore(parse_etcd_url(etcd))
    try:
        held: dict[str, str] = json.loads(store.claim("ca", b"{}"))  # the first claim stays
        return held
    finally:
        store.close()


def test_replicas_share_a_ca_whose_key_etcd_keeps_encrypted(
    tmp_path: Path, etcd: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        with (
            ConfigServer(tmp_path / "a", store_url=etcd, ca_key_passphrase=PASSPHRASE) as a,
            ConfigServer(tmp_path / "b", store_url=etcd, ca_key_passphrase=PASSPHRASE) as b,
        ):
            assert a.state is not None
            assert b.state is not None
            assert a.state.trust_bundle == b.state.trust_bundle
        held = stored_ca(etcd)
        assert held["key"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert serialization.load_pem_private_key(held["key"].encode(), password=PASSPHRASE)
        # B took A's CA: its own copy on disk is plain, 0600, and is A's key.
        local = tmp_path / "b" / "ca" / "ca-key.pem"
        assert local.stat().st_mode & 0o777 == 0o600
        mine = serialization.load_pem_private_key(local.read_bytes(), password=None)
        theirs = serialization.load_pem_private_key((tmp_path / "a" / "ca" / "ca-key.pem").read_bytes(), None)
        assert mine.public_key() == theirs.public_key()
    assert "unencrypted" not in caplog.text
    assert PASSPHRASE.decode() not in caplog.text
    # A replica without the passphrase, or with another one, does not start.
    with pytest.raises(
        MeshError, match="the CA key kept in etcd is encrypted: give this replica --ca-key-passphrase-file"
    ):
        ConfigServer(tmp_path / "c", store_url=etcd).start()
    with pytest.raises(MeshError, match="--ca-key-passphrase-file does not open the CA key kept in etcd"):
        ConfigServer(tmp_path / "d", store_url=etcd, ca_key_passphrase=b"another").start()


def test_a_ca_key_kept_unencrypted_is_warned_about(
    tmp_path: Path, etcd: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), ConfigServer(tmp_path / "a", store_url=etcd):
        pass
    assert "the CA's private key is kept in etcd unencrypted (/meshlib/claims/ca)" in caplog.text
    assert "BEGIN PRIVATE KEY" in stored_ca(etcd)["key"]


def test_the_passphrase_needs_etcd(tmp_path: Path) -> None:
    with pytest.raises(
        MeshError, match="--ca-key-passphrase-file encrypts the CA key kept in etcd: it needs --store"
    ):
        ConfigServer(tmp_path / "a", ca_key_passphrase=PASSPHRASE).start()
