"""The network layer's identity check on real TLS handshakes: a server must present the SPIFFE
ID the registry gave its endpoint, or nothing of the request is written."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpcore
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshlib.ca.svid import CaMaterial, issue_svid, make_ca
from meshlib.http.network import MeshBackend
from meshlib.workload_identity import WorkloadIdentity

DOMAIN = "cluster.local"
REVIEWS = f"spiffe://{DOMAIN}/ns/default/sa/reviews"
RATINGS = f"spiffe://{DOMAIN}/ns/default/sa/ratings"


def identity(tmp_path: Path, spiffe: str, ca: CaMaterial) -> WorkloadIdentity:
    ident = WorkloadIdentity(tmp_path / spiffe.rsplit("/", 1)[1], spiffe)
    csr = x509.load_pem_x509_csr(ident.csr_pem().encode())
    ident.install(
        [issue_svid(ca, csr, spiffe, dt.timedelta(hours=1))],
        [ca.certificate.public_bytes(serialization.Encoding.PEM).decode()],
    )
    return ident


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[tuple[int, list[bytes]]]:
    """Accepts TLS connections one at a time, records what a client sends, answers 200."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(2)
                    data = b""
                    while not _whole(data) and (chunk := tls.recv(65536)):
                        data += chunk
                    if data:
                        received.append(data)
                    if _whole(data):
                        tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):
                pass  # a refused handshake, or a client that hung up: what it sent is recorded

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _whole(data: bytes) -> bool:
    """A whole request: its head, and as much body as its Content-Length says."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def mesh_pool(client: WorkloadIdentity, expected: str) -> httpcore.ConnectionPool:
    """A pool like the HTTP transport's for an mTLS endpoint: the network layer checks the peer."""
    return httpcore.ConnectionPool(
        ssl_context=client.client_context(), network_backend=MeshBackend(expected, client.client_context)
    )


def test_a_server_with_another_mesh_identity_is_refused_before_the_request(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    impostor = identity(tmp_path, RATINGS, ca)  # a valid mesh certificate, of the wrong service
    with tls_server(impostor.server_context()) as (port, received), mesh_pool(client, REVIEWS) as pool:
        with pytest.raises(httpcore.ConnectError, match=f"mTLS peer is {RATINGS}, expected {REVIEWS}"):
            pool.request("POST", f"https://127.0.0.1:{port}/orders", content=b"secret order")
        with mesh_pool(client, RATINGS) as right:  # the control: the same server, expected as itself
            assert (
                right.request("POST", f"https://127.0.0.1:{port}/orders", content=b"secret order").status
                == 200
            )
    sent = b"".join(received)
    assert sent.startswith(b"POST /orders"), "the control request did reach the server"
    assert sent.count(b"secret order") == 1, "only the control's: nothing of the refused request arrived"


def test_the_expected_server_passes_and_gets_the_request(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    reviews = identity(tmp_path, REVIEWS, ca)
    with tls_server(reviews.server_context()) as (port, received), mesh_pool(client, REVIEWS) as pool:
        response = pool.request("GET", f"https://127.0.0.1:{port}/")
    assert response.status == 200
    assert response.content == b"ok"
    assert b"".join(received).startswith(b"GET / HTTP/1.1")


def test_a_server_from_a_foreign_ca_fails_the_handshake(tmp_path: Path) -> None:
    ca, foreign = make_ca(DOMAIN), make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    impostor = identity(tmp_path / "foreign", REVIEWS, foreign)  # the right name, the wrong CA
    with (
        tls_server(impostor.server_context(require_client_cert=False)) as (port, received),
        mesh_pool(client, REVIEWS) as pool,
        pytest.raises(httpcore.ConnectError),
    ):
        pool.request("GET", f"https://127.0.0.1:{port}/")
    assert b"".join(received) == b""


# --- TLS to a non-mesh endpoint proves the requested host, not the endpoint's address ------


def _web_pki(tmp_path: Path, names: list[str]) -> tuple[ssl.SSLContext, Path]:
    """A server context whose certificate (from a CA of its own) names ``names`` and 127.0.0.1,
    and the CA's file for clients to trust."""
    import ipaddress

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test web CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path / f"pki-{names[0]}"
    folder.mkdir()
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "leaf.pem", folder / "key.pem")
    return context, folder / "ca.pem"


EXTERNAL = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: bank}}
spec:
  hosts: [api.bank.example]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: https, protocol: HTTPS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{https: {port}}}}}]
"""


@pytest.mark.parametrize(("names", "accepted"), [(["localhost"], False), (["api.bank.example"], True)])
def test_an_https_endpoint_must_prove_the_requested_host_not_its_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, names: list[str], accepted: bool
) -> None:
    import httpx

    from meshlib import Mesh

    context, ca_file = _web_pki(tmp_path, names)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the client trusts the test CA
    with tls_server(context) as (port, received):
        policy = tmp_path / "bank.yaml"
        policy.write_text(EXTERNAL.format(port=port))
        with Mesh("frontend", config=policy) as mesh, mesh.http_client() as client:
            if accepted:
                answer = client.get("https://api.bank.example/accounts", headers={"x-api-key": "secret"})
                assert answer.status_code == 200
                assert b"x-api-key: secret" in received[0]
            else:
                # The certificate is valid for 127.0.0.1, where the endpoint is: no matter.
                with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
                    client.get("https://api.bank.example/accounts", headers={"x-api-key": "secret"})
                assert received == [], "nothing of the request (or its API key) was sent"
