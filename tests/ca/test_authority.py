"""Loading the operator's CA: the bundle it hands out must anchor what it signs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from meshlib.ca.authority import CertificateAuthority
from meshlib.ca.svid import CaMaterial, key_id, make_ca
from meshlib.errors import MeshError


def write(material: CaMaterial, folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert.write_bytes(material.certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        material.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_a_bundle_with_the_old_and_the_new_root_is_taken(tmp_path: Path) -> None:
    old, new = make_ca("cluster.local"), make_ca("cluster.local")
    write(old, tmp_path, "old")
    cert, key = write(new, tmp_path, "new")
    bundle = tmp_path / "both.pem"
    bundle.write_bytes((tmp_path / "old.pem").read_bytes() + cert.read_bytes())
    ca = CertificateAuthority.load_or_create(
        tmp_path / "cp", "cluster.local", ca_cert=cert, ca_key=key, ca_bundle=bundle
    )
    assert ca.roots == (old.certificate, new.certificate)
    assert ca.key_id == key_id(new.certificate)
    assert len(ca.trust_bundle()) == 2


def test_a_bundle_that_does_not_anchor_the_signing_ca_is_refused(tmp_path: Path) -> None:
    signing, stranger = make_ca("cluster.local"), make_ca("cluster.local")
    cert, key = write(signing, tmp_path, "signing")
    other, _ = write(stranger, tmp_path, "stranger")
    with pytest.raises(
        MeshError, match=r"stranger\.pem: no root in the trust bundle issued the CA .*meshlib root CA"
    ):
        CertificateAuthority.load_or_create(
            tmp_path / "cp", "cluster.local", ca_cert=cert, ca_key=key, ca_bundle=other
        )
    assert not (tmp_path / "cp" / "ca" / "ca.pem").exists(), "nothing made or stored"


def test_a_bundle_that_is_not_pem_says_so(tmp_path: Path) -> None:
    cert, key = write(make_ca("cluster.local"), tmp_path, "ca")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(MeshError, match=r"junk\.pem: not a PEM certificate bundle"):
        CertificateAuthority.load_or_create(
            tmp_path / "cp", "cluster.local", ca_cert=cert, ca_key=key, ca_bundle=junk
        )
    with pytest.raises(MeshError, match=r"missing\.pem: not a PEM certificate bundle"):
        CertificateAuthority.load_or_create(
            tmp_path / "cp", "cluster.local", ca_cert=cert, ca_key=key, ca_bundle=tmp_path / "missing.pem"
        )
