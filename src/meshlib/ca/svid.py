"""X.509-SVIDs as the SPIFFE spec requires them, built with cryptography. Pure: no I/O.

Rules (SPIFFE X.509-SVID, §4-5) every issued leaf follows:
- exactly one URI SAN, the SPIFFE ID (plus the DNS name `<sa>.<ns>.svc`, which SPIFFE allows:
  it lets TLS stacks that only check host names, such as grpcio, verify the identity);
- an empty subject, so the SAN extension is critical;
- BasicConstraints CA=false, critical;
- KeyUsage critical with digitalSignature (keyEncipherment too, for RSA keys), never
  keyCertSign or cRLSign;
- ExtendedKeyUsage serverAuth and clientAuth;
- AuthorityKeyIdentifier and SubjectKeyIdentifier present.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CaMaterial",
    "issue_server_certificate",
    "issue_svid",
    "issuer_key_id",
    "key_id",
    "make_ca",
    "pem_certificate",
    "pem_key",
    "service_dns_name",
    "spiffe_id_of",
    "verify_csr",
]

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def pem_certificate(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pem_key(key: SigningKey, passphrase: bytes | None = None) -> str:
    """The private key as PKCS#8 PEM: unencrypted for a 0600 file, encrypted with
    ``passphrase`` (the best scheme ``cryptography`` offers) for a store others can read."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    ).decode()


@dataclass(frozen=True)
class CaMaterial:
    """The signing CA: its certificate and key, and the chain above it (empty for a root)."""

    certificate: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return (self.chain[-1],) if self.chain else (self.certificate,)


def make_ca(
    trust_domain: str,
    *,
    now: dt.datetime | None = None,
    days: int = 3650,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> CaMaterial:
    """A self-signed root for the trust domain (ECDSA P-256), as istiod makes at first start."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlib"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshlib root CA for {trust_domain}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CaMaterial(cert, key)


def verify_csr(csr: x509.CertificateSigningRequest) -> None:
    """The CSR must prove possession of its key. Anything it asks for is ignored."""
    if not csr.is_signature_valid:
        raise ValueError("the CSR's signature does not verify: it does not prove the key")
    public = csr.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        if public.curve.name not in ("secp256r1", "secp384r1"):
            raise ValueError(f"unsupported curve {public.curve.name}; use P-256 or P-384")
    elif isinstance(public, rsa.RSAPublicKey):
        if public.key_size < 2048:
            raise ValueError(f"RSA key of {public.key_size} bits is too small; use 2048 or more")
    else:
        raise ValueError("unsupported key type; use ECDSA P-256")


def issue_svid(
    ca: CaMaterial,
    csr: x509.CertificateSigningRequest,
    spiffe_id: str,
    ttl: dt.timedelta,
    *,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign a leaf for ``spiffe_id`` over the CSR's key. Like istiod, the identity comes from
    the caller's credential, never from the CSR: its subject and SANs are discarded."""
    verify_csr(csr)
    sans = [x509.UniformResourceIdentifier(spiffe_id), *_dns_names(spiffe_id)]
    return _leaf(ca, csr.public_key(), sans, ttl, now)


def issue_server_certificate(
    ca: CaMaterial, key: SigningKey, names: Sequence[str], ttl: dt.timedelta
) -> x509.Certificate:
    """A TLS server certificate for the config service itself: ``names`` (host names or IP
    addresses) as its SANs, no SPIFFE ID (it is no workload)."""
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return _leaf(ca, key.public_key(), sans, ttl, None)


def _leaf(
    ca: CaMaterial,
    public: Any,
    sans: Sequence[x509.GeneralName],
    ttl: dt.timedelta,
    now: dt.datetime | None,
) -> x509.Certificate:
    issued = now or dt.datetime.now(dt.UTC)
    start = issued - min(dt.timedelta(minutes=1), ttl / 10)  # tolerate a little clock skew
    end = min(issued + ttl, ca.certificate.not_valid_after_utc)
    rsa_key = isinstance(public, rsa.RSAPublicKey)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.certificate.subject)
        .public_key(public)
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=rsa_key,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def service_dns_name(spiffe_id: str) -> str | None:
    """``spiffe://td/ns/shop/sa/orders`` -> ``orders.shop.svc``: the DNS SAN next to the URI SAN.

    SPIFFE allows other SAN types beside the one URI SAN; this one lets TLS stacks that only
    check host names (grpcio) verify a peer's identity by its service name."""
    parts = spiffe_id.removeprefix("spiffe://").split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
        return f"{parts[4]}.{parts[2]}.svc"
    return None


def _dns_names(spiffe_id: str) -> list[x509.GeneralName]:
    name = service_dns_name(spiffe_id)
    return [x509.DNSName(name)] if name else []


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The one SPIFFE ID in a certificate's URI SANs, or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    return uris[0] if len(uris) == 1 else None


def key_id(cert: x509.Certificate) -> str:
    """A CA's short key id (its SubjectKeyIdentifier, 16 hex digits): what ``meshctl serve``
    prints and ``meshctl status`` shows as each workload's CERT ISSUER."""
    try:
        digest = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        digest = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return digest.hex()[:16]


def issuer_key_id(cert: x509.Certificate) -> str | None:
    """The short key id of the CA that signed ``cert`` (its AuthorityKeyIdentifier)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return aki.key_identifier.hex()[:16] if aki.key_identifier else None


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, at most 20 octets (RFC 5280)
