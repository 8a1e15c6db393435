"""The CA over real HTTP: bootstrap tokens, certificate issuance, refusals, operator CAs."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import X509Svid

from meshlib.ca.svid import make_ca, spiffe_id_of
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer


def csr_pem(key: ec.EllipticCurvePrivateKey, claims: str | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whoever")])
    )
    if claims:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(claims)]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def request_certificate(server: ConfigServer, token: str | None, csr: str, **extra: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{server.url}/v1/certificates", json={"csr": csr, **extra}, headers=headers)


def test_a_token_for_orders_cannot_obtain_payments(server: ConfigServer, admin: ControlPlaneClient) -> None:
    made = admin.create_token("orders", "shop")
    assert made["identity"] == "spiffe://cluster.local/ns/shop/sa/orders"
    key = ec.generate_private_key(ec.SECP256R1())
    answer = request_certificate(
        server, made["token"], csr_pem(key, "spiffe://cluster.local/ns/shop/sa/payments")
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    leaf = x509.load_pem_x509_certificate(body["certificateChain"][0].encode())
    assert spiffe_id_of(leaf) == "spiffe://cluster.local/ns/shop/sa/orders"
    assert body["identity"] == "spiffe://cluster.local/ns/shop/sa/orders"
    roots = [x509.load_pem_x509_certificate(p.encode()) for p in body["trustBundle"]]
    verified = PolicyBuilder().store(Store(roots)).build_client_verifier().verify(leaf, [])
    assert [s.value for s in verified.subjects or [] if isinstance(s, x509.UniformResourceIdentifier)] == [
        "spiffe://cluster.local/ns/shop/sa/orders"
    ]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert str(X509Svid.parse(body["certificateChain"][0].encode(), key_pem).spiffe_id).endswith("/sa/orders")
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(hours=23) < lifetime <= dt.timedelta(hours=24, minutes=2), "default TTL 24h"


@pytest.mark.parametrize("case", ["missing", "wrong", "malformed", "expired", "revoked"])
def test_refused_tokens_get_401_and_no_certificate(
    server: ConfigServer, admin: ControlPlaneClient, case: str
) -> None:
    made = admin.create_token("orders", "shop", ttl="1s" if case == "expired" else None)
    token = {
        "missing": None,
        "wrong": made["token"][:-4] + "AAAA",
        "malformed": "let-me-in",
        "expired": made["token"],
        "revoked": made["token"],
    }[case]
    if case == "revoked":
        admin.revoke_token(made["id"])
    if case == "expired":
        import time

        time.sleep(1.1)
    answer = request_certificate(server, token, csr_pem(ec.generate_private_key(ec.SECP256R1())))
    assert answer.status_code == 401
    assert "certificateChain" not in answer.json()
    assert answer.json()["error"] in {
        "missing bootstrap token",
        "unknown bootstrap token",
        f"bootstrap token {made['id']} expired",
        f"bootstrap token {made['id']} was revoked",
    }


def test_ttl_above_the_maximum_is_refused(server: ConfigServer, admin: ControlPlaneClient) -> None:
    made = admin.create_token("orders")
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1()))
    refused = request_certificate(server, made["token"], csr, ttl="200h")
    assert refused.status_code == 400
    assert "above the maximum" in refused.json()["error"]
    short = request_certificate(server, made["token"], csr, ttl="1h")
    leaf = x509.load_pem_x509_certificate(short.json()["certificateChain"][0].encode())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(hours=1, minutes=2)


def test_garbage_csr_is_a_clear_400(server: ConfigServer, admin: ControlPlaneClient) -> None:
    made = admin.create_token("orders")
    answer = request_certificate(server, made["token"], "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    assert answer.status_code == 400
    assert "certificate signing request" in answer.json()["error"]


def test_token_admin_needs_the_admin_token_and_lists_no_secrets(
    server: ConfigServer, admin: ControlPlaneClient
) -> None:
    assert httpx.post(f"{server.url}/v1/tokens", json={"service": "orders"}).status_code == 401
    made = admin.create_token("orders", "shop")
    (listed,) = admin.list_tokens()["items"]
    assert listed["id"] == made["id"]
    assert "token" not in listed
    assert "digest" not in listed
    assert made["token"] not in (server.data_dir / "meshlib.db").read_bytes().decode("latin-1")


def test_ca_keys_are_private_and_the_bundle_travels_in_snapshots(server: ConfigServer) -> None:
    key = server.data_dir / "ca" / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    bundle = httpx.post(f"{server.url}/v1/watch", json={"version": -1, "wait": 0}).json()["trustBundle"]
    assert bundle == httpx.get(f"{server.url}/v1/trust-bundle").json()["roots"]
    assert bundle[0].startswith("-----BEGIN CERTIFICATE-----")


def test_an_operator_intermediate_signs_and_chains_to_their_root(tmp_path: Path) -> None:
    root = make_ca("cluster.local")
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshlib intermediate")]))
        .sign(inter_key, hashes.SHA256())
    )
    inter = (
        x509.CertificateBuilder()
        .subject_name(inter_csr.subject)
        .issuer_name(root.certificate.subject)
        .public_key(inter_key.public_key())
        .serial_number(7)
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()), critical=False
        )
        .sign(root.key, hashes.SHA256())
    )
    files = {name: tmp_path / f"{name}.pem" for name in ("inter", "inter-key", "root")}
    files["inter"].write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    files["inter-key"].write_bytes(
        inter_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files["root"].write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    with (
        ConfigServer(
            tmp_path / "cp", ca_cert=files["inter"], ca_key=files["inter-key"], ca_bundle=files["root"]
        ) as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        made = admin.create_token("orders")
        body = request_certificate(
            server, made["token"], csr_pem(ec.generate_private_key(ec.SECP256R1()))
        ).json()
    chain = [x509.load_pem_x509_certificate(p.encode()) for p in body["certificateChain"]]
    assert len(chain) == 2
    assert chain[1] == inter
    assert [x509.load_pem_x509_certificate(p.encode()) for p in body["trustBundle"]] == [root.certificate]
    verified = (
        PolicyBuilder().store(Store([root.certificate])).build_client_verifier().verify(chain[0], chain[1:])
    )
    assert [s.value for s in verified.subjects or [] if isinstance(s, x509.UniformResourceIdentifier)] == [
        "spiffe://cluster.local/ns/default/sa/orders"
    ]
