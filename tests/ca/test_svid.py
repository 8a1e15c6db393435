"""Every issued certificate is a valid X.509-SVID, checked by two independent verifiers."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from spiffe import X509Svid

from meshlib.ca.svid import issue_svid, make_ca, spiffe_id_of

ORDERS = "spiffe://cluster.local/ns/shop/sa/orders"


def csr_for(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, claims: str | None = None
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")])
    )
    if claims:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(claims)]), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def ca():  # type: ignore[no-untyped-def]
    return make_ca("cluster.local")


def test_leaf_follows_every_x509_svid_rule(ca) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_svid(ca, csr_for(key), ORDERS, dt.timedelta(hours=24))
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical, "the subject is empty, so the SAN must be critical"
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ORDERS]
    assert len(san.value.get_values_for_type(x509.UniformResourceIdentifier)) == 1, "exactly one URI SAN"
    # SPIFFE allows other SAN types: a DNS name lets host-name-checking TLS stacks (grpcio) verify.
    assert san.value.get_values_for_type(x509.DNSName) == ["orders.shop.svc"]
    assert leaf.subject == x509.Name([])
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert not usage.value.crl_sign
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == (
        ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(hours=24) <= lifetime <= dt.timedelta(hours=24, minutes=2)


def test_independent_checks_spiffe_package_and_cryptography_path_validation(ca) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_svid(ca, csr_for(key), ORDERS, dt.timedelta(hours=1))
    svid = X509Svid.parse(pem(leaf), key_pem(key))
    assert str(svid.spiffe_id) == ORDERS
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_client_verifier()
    verified = verifier.verify(leaf, [])
    assert [s.value for s in verified.subjects or [] if isinstance(s, x509.UniformResourceIdentifier)] == [
        ORDERS
    ]


def test_identity_in_the_csr_is_ignored(ca) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = issue_svid(
        ca, csr_for(key, claims="spiffe://cluster.local/ns/shop/sa/payments"), ORDERS, dt.timedelta(hours=1)
    )
    assert spiffe_id_of(leaf) == ORDERS


def test_foreign_and_expired_certificates_fail_path_validation(ca) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    foreign = make_ca("cluster.local")
    stranger = issue_svid(foreign, csr_for(key), ORDERS, dt.timedelta(hours=1))
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_client_verifier()
    with pytest.raises(VerificationError):
        verifier.verify(stranger, [])
    old = issue_svid(
        ca, csr_for(key), ORDERS, dt.timedelta(hours=1), now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    )
    with pytest.raises(VerificationError):
        verifier.verify(old, [])


def test_a_csr_that_does_not_prove_its_key_is_refused(ca) -> None:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    good = csr_for(key)
    raw = bytearray(good.public_bytes(serialization.Encoding.DER))
    raw[-5] ^= 0xFF  # corrupt the signature
    broken = x509.load_der_x509_csr(bytes(raw))
    with pytest.raises(ValueError, match="signature does not verify"):
        issue_svid(ca, broken, ORDERS, dt.timedelta(hours=1))
    weak = csr_for(rsa.generate_private_key(65537, 1024))  # noqa: S505 - the weak key is the point
    with pytest.raises(ValueError, match="too small"):
        issue_svid(ca, weak, ORDERS, dt.timedelta(hours=1))
