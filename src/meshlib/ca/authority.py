"""The config service's CA: a root made at first start, or an operator's CA used as given.

Files (in ``<data-dir>/ca``, written 0600): ``ca.pem`` (the signing CA), ``ca-key.pem``,
``roots.pem`` (the trust bundle workloads receive). With ``--ca-cert/--ca-key`` the
operator's CA (typically an intermediate under their root) signs, and ``--ca-bundle``
names the roots to trust (default: the CA itself).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .._files import write_secret
from ..errors import MeshError
from .svid import CaMaterial, issue_server_certificate, issue_svid, key_id, make_ca, pem_certificate, pem_key

__all__ = ["DEFAULT_TTL", "MAX_TTL", "MIN_TTL", "CertificateAuthority", "CertificateRefused"]

DEFAULT_TTL = dt.timedelta(hours=24)
MAX_TTL = dt.timedelta(days=7)
SERVER_TTL = dt.timedelta(days=90)  # the config service's own TLS certificate
MIN_TTL = dt.timedelta(seconds=1)  # X.509 validity counts whole seconds: less is no certificate


class CertificateRefused(MeshError):
    """A certificate request the CA will not sign; the message says why."""


class CertificateAuthority:
    def __init__(
        self,
        material: CaMaterial,
        trust_domain: str,
        roots: tuple[x509.Certificate, ...],
        *,
        default_ttl: dt.timedelta = DEFAULT_TTL,
        max_ttl: dt.timedelta = MAX_TTL,
    ) -> None:
        self.material = material
        self.trust_domain = trust_domain
        self.roots = roots
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl

    @classmethod
    def load_or_create(
        cls,
        data_dir: Path,
        trust_domain: str,
        *,
        ca_cert: Path | None = None,
        ca_key: Path | None = None,
        ca_bundle: Path | None = None,
        max_ttl: dt.timedelta = MAX_TTL,
    ) -> CertificateAuthority:
        folder = data_dir / "ca"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if ca_cert is not None or ca_key is not None:
            if ca_cert is None or ca_key is None:
                raise MeshError("--ca-cert and --ca-key go together")
            material = _load_operator_ca(ca_cert, ca_key)
            roots = _load_bundle(ca_bundle) if ca_bundle else (material.certificate,)
            _check_anchored(material, roots, ca_bundle)
            return cls(material, trust_domain, roots, max_ttl=max_ttl)
        cert_path, key_path = folder / "ca.pem", folder / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            material = _load_operator_ca(cert_path, key_path)
        else:
            material = make_ca(trust_domain)
            write_secret(key_path, pem_key(material.key))
            cert_path.write_text(pem_certificate(material.certificate))
            (folder / "roots.pem").write_text(pem_certificate(material.certificate))
        return cls(material, trust_domain, material.roots, max_ttl=max_ttl)

    @property
    def key_id(self) -> str:
        return key_id(self.material.certificate)

    def trust_bundle(self) -> list[str]:
        return [pem_certificate(root) for root in self.roots]

    def sign(
        self, csr_pem: str, namespace: str, service_account: str, ttl: dt.timedelta | None = None
    ) -> tuple[list[str], dt.datetime]:
        """A chain (leaf first) for the token's identity, whatever the CSR says."""
        ttl = self.default_ttl if ttl is None else ttl
        if ttl > self.max_ttl:
            raise CertificateRefused(f"requested TTL {ttl} is above the maximum {self.max_ttl}")
        if ttl < MIN_TTL:
            raise CertificateRefused(f"requested TTL {ttl.total_seconds():g}s is below the minimum of 1s")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            raise CertificateRefused(f"not a PEM certificate signing request: {exc}") from None
        spiffe_id = f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"
        try:
            leaf = issue_svid(self.material, csr, spiffe_id, ttl)
        except ValueError as exc:
            raise CertificateRefused(str(exc)) from None
        chain = [pem_certificate(leaf), *(pem_certificate(c) for c in self._chain_above_leaf())]
        return chain, leaf.not_valid_after_utc

    def server_certificate(self, names: Sequence[str], ttl: dt.timedelta = SERVER_TTL) -> tuple[str, str]:
        """A TLS certificate for the config service at ``names``, with a key made here:
        (chain PEM, leaf first; key PEM). Made again at every start."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = issue_server_certificate(self.material, key, names, ttl)
        chain = "".join([pem_certificate(leaf), *(pem_certificate(c) for c in self._chain_above_leaf())])
        return chain, pem_key(key)

    def _chain_above_leaf(self) -> list[x509.Certificate]:
        """The signing CA (when it is not itself a root) and its intermediates."""
        above = [self.material.certificate, *self.material.chain]
        return [c for c in above if c not in self.roots]


def _load_bundle(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        roots = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise MeshError(f"{path}: not a PEM certificate bundle: {exc}") from None
    return roots


def _check_anchored(material: CaMaterial, roots: tuple[x509.Certificate, ...], bundle: Path | None) -> None:
    """Certificates the CA signs must verify against the bundle it hands out (during a
    root rotation the bundle holds the old root and the new one)."""
    path = [material.certificate, *material.chain]
    for cert in path:
        if cert in roots:
            return
    top = path[-1]
    for root in roots:
        try:
            top.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return
    raise MeshError(
        f"{bundle}: no root in the trust bundle issued the CA {top.subject.rfc4514_string()}; "
        "workloads could not verify the certificates it signs"
    )


def _load_operator_ca(cert_path: Path, key_path: Path) -> CaMaterial:
    certs = x509.load_pem_x509_certificates(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise MeshError(f"{key_path}: the CA key must be ECDSA or RSA")
    cert = certs[0]
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise MeshError(f"{cert_path}: not a CA certificate (BasicConstraints CA=true is missing)")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise MeshError(f"{key_path} does not belong to {cert_path}")
    return CaMaterial(cert, key, tuple(certs[1:]))
