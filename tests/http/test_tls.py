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
from meshlib.http.tls import MeshBackend
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
    """Accepts one TLS connection at a time and records every byte a client sends."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    tls.settimeout(2)
                    while data := tls.recv(4096):
                        received.append(data)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_server_with_another_mesh_identity_is_refused_before_the_request(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    impostor = identity(tmp_path, RATINGS, ca)  # a valid mesh certificate, of the wrong service
    with tls_server(impostor.server_context()) as (port, received):
        backend = MeshBackend(REVIEWS, client.client_context)
        stream = backend.connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore.ConnectError, match=f"mTLS peer is {RATINGS}, expected {REVIEWS}"):
            stream.start_tls(client.client_context(), timeout=5)
    assert b"".join(received) == b"", "not a byte of the request reached the impostor"


def test_the_expected_server_passes_and_gets_the_request(tmp_path: Path) -> None:
    ca = make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    reviews = identity(tmp_path, REVIEWS, ca)
    with tls_server(reviews.server_context()) as (port, received):
        backend = MeshBackend(REVIEWS, client.client_context)
        stream = backend.connect_tcp("127.0.0.1", port, timeout=5)
        tls = stream.start_tls(client.client_context(), timeout=5)
        tls.write(b"GET / HTTP/1.1\r\n\r\n", timeout=5)
        tls.close()
        deadline = dt.datetime.now() + dt.timedelta(seconds=5)
        while not received and dt.datetime.now() < deadline:
            threading.Event().wait(0.02)
    assert b"".join(received).startswith(b"GET / HTTP/1.1")


def test_a_server_from_a_foreign_ca_fails_the_handshake(tmp_path: Path) -> None:
    ca, foreign = make_ca(DOMAIN), make_ca(DOMAIN)
    client = identity(tmp_path, f"spiffe://{DOMAIN}/ns/default/sa/frontend", ca)
    impostor = identity(tmp_path / "foreign", REVIEWS, foreign)  # the right name, the wrong CA
    with tls_server(impostor.server_context(require_client_cert=False)) as (port, received):
        stream = MeshBackend(REVIEWS, client.client_context).connect_tcp("127.0.0.1", port, timeout=5)
        with pytest.raises(httpcore.ConnectError):
            stream.start_tls(client.client_context(), timeout=5)
    assert b"".join(received) == b""
