"""TLS towards etcd: a real etcd serving clients over TLS only, with ``--client-cert-auth``;
replicas that present a client certificate of its CA get in, anything else is refused with a
clear error, and bad option values are refused naming the option."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshlib.ca.authority import CertificateAuthority
from meshlib.cli.main import main as meshctl
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.etcd_process import running_etcd
from meshlib.controlplane.etcd_store import EtcdStore, EtcdTls, parse_etcd_url
from meshlib.controlplane.server import ConfigServer
from meshlib.errors import ConfigError, MeshError
from meshlib.policy.resources import ResourceKey
from tests.conftest import virtual_service
from tests.servers import wait_for


@dataclass
class EtcdPki:
    ca: Path  # what etcd's certificate is verified by, and client certificates are checked against
    cert: Path
    key: Path


def write_pki(folder: Path, name: str) -> EtcdPki:
    """A CA of its own and one certificate of it for 127.0.0.1 (server and client use)."""
    ca = CertificateAuthority.load_or_create(folder / name, f"{name}.test")
    chain, key = ca.server_certificate(["127.0.0.1", "localhost"])
    pki = EtcdPki(folder / f"{name}-ca.pem", folder / f"{name}.pem", folder / f"{name}-key.pem")
    pki.ca.write_text("".join(ca.trust_bundle()))
    pki.cert.write_text(chain)
    pki.key.write_text(key)
    pki.key.chmod(0o600)
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> EtcdPki:
    return write_pki(tmp_path, "etcd-pki")


@pytest.fixture
def etcd(tmp_path: Path, pki: EtcdPki) -> Iterator[str]:
    with running_etcd(tmp_path / "etcd", tls=(pki.cert, pki.key, pki.ca)) as (url, _):
        yield url


def test_replicas_with_a_client_certificate_share_state_over_tls(
    tmp_path: Path, etcd: str, pki: EtcdPki
) -> None:
    tls = EtcdTls(pki.ca, pki.cert, pki.key)
    with (
        ConfigServer(tmp_path / "a", store_url=etcd, etcd_tls=tls) as a,
        ConfigServer(tmp_path / "b", store_url=etcd, etcd_tls=tls) as b,
        ControlPlaneClient(a.url, a.admin_token) as on_a,
        ControlPlaneClient(b.url, b.admin_token) as on_b,
    ):
        assert a.admin_token == b.admin_token  # settled through etcd, over TLS
        version = on_a.apply([virtual_service()])["version"]
        assert b.state is not None
        assert wait_for(lambda: b.state is not None and b.state.version == version, 5)  # followed
        assert on_b.get(ResourceKey("VirtualService", "default", "reviews"))["metadata"]["name"] == "reviews"
    # What is in etcd is what a TLS client reads back.
    store = EtcdStore(parse_etcd_url(etcd), tls=tls)
    try:
        assert [r.key.name for r in store.load().resources] == ["reviews"]
    finally:
        store.close()


@pytest.mark.parametrize(
    "who", ["plaintext", "no client certificate", "another CA's certificate", "wrong CA"]
)
def test_anything_but_a_verified_tls_client_is_refused(
    tmp_path: Path, etcd: str, pki: EtcdPki, who: str
) -> None:
    other = write_pki(tmp_path, "other")
    tls = {
        "plaintext": None,
        "no client certificate": EtcdTls(pki.ca),
        "another CA's certificate": EtcdTls(pki.ca, other.cert, other.key),
        "wrong CA": EtcdTls(other.ca, pki.cert, pki.key),
    }[who]
    with pytest.raises(MeshError, match=r"no etcd endpoint answers \(127\.0\.0\.1:\d+: "):
        EtcdStore(parse_etcd_url(etcd), timeout=1.0, tls=tls)


def test_bad_tls_options_are_refused_naming_the_option(
    tmp_path: Path, pki: EtcdPki, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match=r"--etcd-cacert .*missing.pem: No such file"):
        EtcdTls(tmp_path / "missing.pem").credentials()
    with pytest.raises(ConfigError, match=r"--etcd-key .*etcd-pki.pem: not a PEM file \(PRIVATE KEY"):
        EtcdTls(pki.ca, pki.cert, pki.cert).credentials()
    with pytest.raises(ConfigError, match="--etcd-cert and --etcd-key go together"):
        EtcdTls(pki.ca, pki.cert).credentials()
    serve = ["serve", "--data-dir", str(tmp_path / "cs"), "--port", "0"]
    assert meshctl([*serve, "--etcd-cert", str(pki.cert), "--store", "etcd://127.0.0.1:1"]) != 0
    assert "--etcd-cert and --etcd-key need --etcd-cacert" in capsys.readouterr().err
    assert meshctl([*serve, "--etcd-cacert", str(pki.ca)]) != 0
    assert "need --store etcd://" in capsys.readouterr().err
