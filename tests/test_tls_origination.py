"""DestinationRule tls mode SIMPLE and MUTUAL on real TLS servers (uvicorn, grpcio): the mesh
originates TLS (also when the application called ``http://``) with the rule's CA, SNI,
subjectAltNames, CRL and client certificate, and refuses — before a byte is sent — whatever
fails them. The certificates are made here, in ``tmp_path``, with ``cryptography``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import ipaddress
import socket
import ssl
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from uvicorn.protocols.http.h11_impl import H11Protocol

import meshlib.grpc
from meshlib import Mesh
from meshlib._net import bind
from meshlib.errors import CertificateUnavailableError, ConfigError
from meshlib.policy.loader import load_text

HOST = "api.bank.example"  # what the application calls; the endpoint is 127.0.0.1
NOW = dt.datetime.now(dt.UTC)


# --- a throwaway PKI ----------------------------------------------------------------------


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Issued(cert, key, cert_file, key_file)


def make_ca(folder: Path, cn: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(folder, cn.replace(" ", "-"), cert, key)


def issue(
    ca: Issued,
    folder: Path,
    cn: str,
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    client: bool = False,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))  # the endpoint's address: never enough
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _write(folder, cn, cert, key)


def crl(ca: Issued, path: Path, revoked: tuple[x509.Certificate, ...]) -> Path:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(NOW - dt.timedelta(minutes=5))
        .next_update(NOW + dt.timedelta(hours=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - dt.timedelta(minutes=1))
            .build()
        )
    path.write_bytes(builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Pki:
    ca: Issued  # the bank's CA
    other_ca: Issued  # a CA the bank's server does not use
    server: Issued  # api.bank.example, alias.bank.example, spiffe://bank.example/api
    client_ca: Issued
    client: Issued  # frontend's client certificate, from client_ca


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    ca, other, client_ca = (
        make_ca(folder, "bank CA"),
        make_ca(folder, "other CA"),
        make_ca(folder, "client CA"),
    )
    server = issue(
        ca,
        folder,
        "server",
        dns=(HOST, "alias.bank.example"),
        uris=("spiffe://bank.example/api",),
    )
    return Pki(ca, other, server, client_ca, issue(client_ca, folder, "frontend", client=True))


# --- a real HTTPS server that records what it saw ------------------------------------------


@dataclass
class Seen:
    sni: list[str | None] = field(default_factory=list)  # server names of TLS handshakes
    client_certs: list[str] = field(default_factory=list)  # common names of client certificates
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # scheme, path, headers


def _server_context(pki: Pki, seen: Seen, require_client: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server.cert_file, pki.server.key_file)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.client_ca.cert_file)
    context.sni_callback = lambda _sock, name, _ctx: seen.sni.append(name)
    return context


@contextmanager
def https_server(pki: Pki, require_client: bool = False) -> Iterator[tuple[int, Seen]]:
    """uvicorn serving TLS with the bank's certificate (and requiring a client certificate
    from client_ca), recording handshakes, client certificates and requests."""
    seen = Seen()

    class Recording(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            peer = transport.get_extra_info("peercert")
            if peer:
                seen.client_certs.extend(v for rdn in peer["subject"] for k, v in rdn if k == "commonName")
            super().connection_made(transport)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.requests.append((scope["scheme"], scope["path"], headers))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app,
        http=Recording,
        log_level="critical",
        lifespan="off",
        timeout_graceful_shutdown=1,
        ssl_context_factory=lambda _config, _default: _server_context(pki, seen, require_client),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        assert thread.is_alive(), "test server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], seen
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def raw_server() -> Iterator[tuple[int, list[bytes], list[int]]]:
    """A TCP listener that records every byte it is sent (and how many connections came)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    received: list[bytes] = []
    connections = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections[0] += 1
            with conn:
                conn.settimeout(0.5)
                try:
                    while chunk := conn.recv(65536):
                        received.append(chunk)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received, connections
    finally:
        stop.set()
        thread.join(5)
        listener.close()


# --- policy -----------------------------------------------------------------------------------


def entry(port: int, protocol: str = "HTTP", number: int = 80, labels: str = "{}") -> str:
    """The bank as a ServiceEntry: the application calls it on ``number`` (http://api.bank.example),
    its endpoint listens on 127.0.0.1:``port`` (Istio's egress TLS origination setup)."""
    name = protocol.lower()
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: bank}}
        spec:
          hosts: [{HOST}]
          location: MESH_EXTERNAL
          resolution: STATIC
          ports: [{{number: {number}, name: {name}, protocol: {protocol}}}]
          endpoints: [{{address: 127.0.0.1, ports: {{{name}: {port}}}, labels: {labels}}}]
        """)


def rule(tls: str, extra: str = "") -> str:
    """A DestinationRule for the bank whose trafficPolicy.tls is ``tls`` (a YAML flow mapping)."""
    return (
        textwrap.dedent(f"""\
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {{name: bank}}
        spec:
          host: {HOST}
          trafficPolicy:
            tls: {tls}
        """)
        + extra
    )


@contextmanager
def mesh_on(tmp_path: Path, policy: str) -> Iterator[Mesh]:
    path = tmp_path / f"policy-{time.monotonic_ns()}.yaml"
    path.write_text(policy)
    with Mesh("frontend", config=path) as mesh:
        yield mesh


def get(mesh: Mesh, url: str = f"http://{HOST}/accounts", mode: str = "sync", **kw: Any) -> httpx.Response:
    if mode == "sync":
        with mesh.http_client(timeout=5) as client:
            return client.get(url, **kw)

    async def main() -> httpx.Response:
        async with mesh.async_http_client(timeout=5) as client:
            return await client.get(url, **kw)

    return asyncio.run(main())


def simple(pki: Pki, **fields: str) -> str:
    more = "".join(f", {k}: {v}" for k, v in fields.items())
    return f"{{mode: SIMPLE, caCertificates: {pki.ca.cert_file}{more}}}"


# --- HTTP: SIMPLE -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_simple_originates_tls_for_an_http_call_with_the_rules_ca(
    tmp_path: Path, pki: Pki, mode: str
) -> None:
    with https_server(pki) as (port, seen), mesh_on(tmp_path, entry(port) + rule(simple(pki))) as mesh:
        answer = get(mesh, mode=mode, headers={"x-api-key": "secret"})
    assert answer.status_code == 200
    assert answer.text == "ok"
    assert [(scheme, path) for scheme, path, _ in seen.requests] == [("https", "/accounts")]
    assert seen.requests[0][2]["x-api-key"] == "secret"
    assert seen.requests[0][2]["host"] == HOST, "the Host header stays the application's"
    assert seen.sni == [HOST], "Istio's auto SNI: the requested host, not the endpoint's address"


def test_an_https_call_is_verified_with_the_rules_settings(tmp_path: Path, pki: Pki) -> None:
    """In-process there is one TLS layer: an https:// call toward a SIMPLE rule gets the rule's."""
    with (
        https_server(pki) as (port, seen),
        mesh_on(tmp_path, entry(port, protocol="HTTPS", number=443) + rule(simple(pki))) as mesh,
    ):
        assert get(mesh, f"https://{HOST}/accounts").status_code == 200
    assert seen.sni == [HOST]
    assert [scheme for scheme, _, _ in seen.requests] == ["https"]


def test_a_server_certificate_from_another_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    tls = f"{{mode: SIMPLE, caCertificates: {pki.other_ca.cert_file}}}"
    with (
        https_server(pki) as (port, seen),
        mesh_on(tmp_path, entry(port) + rule(tls)) as mesh,
        pytest.raises(httpx.ConnectError, match="certificate verify failed"),
    ):
        get(mesh, headers={"x-api-key": "secret"})
    assert seen.sni, "a TLS handshake was tried"
    assert set(seen.sni) == {HOST}
    assert seen.requests == [], "nothing of the request reached the server"


def test_without_ca_certificates_the_os_roots_are_used(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshlib.http.adapter
    from meshlib.tls_origination import TlsOriginations, client_context

    def fresh_contexts() -> None:  # contexts are per settings: the roots are read once
        monkeypatch.setattr(meshlib.http.adapter, "CONTEXTS", TlsOriginations(client_context))

    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca.cert_file))  # the "OS" trusts another CA
    fresh_contexts()
    with https_server(pki) as (port, seen), mesh_on(tmp_path, entry(port) + rule("{mode: SIMPLE}")) as mesh:
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            get(mesh)
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca.cert_file))  # now it trusts the bank's
        fresh_contexts()
        assert get(mesh).status_code == 200
    assert [scheme for scheme, _, _ in seen.requests] == ["https"]


@pytest.mark.parametrize(
    ("names", "accepted"),
    [
        ("[other.bank.example]", False),
        ("[spiffe://bank.example/other]", False),
        ("[other.bank.example, spiffe://bank.example/api]", True),  # a URI SAN the certificate carries
        ("[alias.bank.example]", True),  # a DNS SAN other than the SNI: SANs replace the host check
    ],
)
def test_subject_alt_names_the_certificate_must_carry(
    tmp_path: Path, pki: Pki, names: str, accepted: bool
) -> None:
    with (
        https_server(pki) as (port, seen),
        mesh_on(tmp_path, entry(port) + rule(simple(pki, subjectAltNames=names))) as mesh,
    ):
        if accepted:
            assert get(mesh).status_code == 200
        else:
            with pytest.raises(httpx.ConnectError, match=r"tls\.subjectAltNames .*certificate names"):
                get(mesh, headers={"x-api-key": "secret"})
    assert len(seen.requests) == (1 if accepted else 0)


def test_the_rules_sni_is_sent_and_the_certificate_must_name_it(tmp_path: Path, pki: Pki) -> None:
    with https_server(pki) as (port, seen):
        with mesh_on(tmp_path, entry(port) + rule(simple(pki, sni="alias.bank.example"))) as mesh:
            assert get(mesh).status_code == 200
        assert seen.sni == ["alias.bank.example"]
        # An sni the certificate does not name, and no subjectAltNames: refused.
        with (
            mesh_on(tmp_path, entry(port) + rule(simple(pki, sni="elsewhere.example"))) as mesh,
            pytest.raises(httpx.ConnectError, match="certificate verify failed"),
        ):
            get(mesh)
        assert seen.sni[-1] == "elsewhere.example"
    assert len(seen.requests) == 1
    assert seen.requests[0][2]["host"] == HOST


def test_insecure_skip_verify_accepts_a_server_no_ca_vouches_for(tmp_path: Path, pki: Pki) -> None:
    with (
        https_server(pki) as (port, seen),
        mesh_on(
            tmp_path, entry(port) + rule("{mode: SIMPLE, insecureSkipVerify: true, sni: nobody.example}")
        ) as mesh,
    ):
        assert get(mesh).status_code == 200
    assert [scheme for scheme, _, _ in seen.requests] == ["https"]
    assert seen.sni == ["nobody.example"]


@pytest.mark.parametrize("revoked", [True, False])
def test_a_revoked_server_certificate_is_refused_by_the_ca_crl(
    tmp_path: Path, pki: Pki, revoked: bool
) -> None:
    listed = (pki.server.cert,) if revoked else ()
    revocations = crl(pki.ca, tmp_path / "bank.crl", listed)
    with (
        https_server(pki) as (port, seen),
        mesh_on(tmp_path, entry(port) + rule(simple(pki, caCrl=str(revocations)))) as mesh,
    ):
        if revoked:
            with pytest.raises(httpx.ConnectError, match="certificate revoked"):
                get(mesh)
        else:
            assert get(mesh).status_code == 200
    assert len(seen.requests) == (0 if revoked else 1)


# --- HTTP: MUTUAL -------------------------------------------------------------------------------


def _mutual(pki: Pki) -> str:
    return (
        f"{{mode: MUTUAL, caCertificates: {pki.ca.cert_file}, "
        f"clientCertificate: {pki.client.cert_file}, privateKey: {pki.client.key_file}}}"
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_mutual_presents_the_client_certificate(tmp_path: Path, pki: Pki, mode: str) -> None:
    # Port-level settings replace the rule's tls for port 80 (TrafficPolicy.for_port).
    port_level = f"    portLevelSettings:\n    - port: {{number: 80}}\n      tls: {_mutual(pki)}\n"
    with (
        https_server(pki, require_client=True) as (port, seen),
        mesh_on(tmp_path, entry(port) + rule("{mode: DISABLE}") + port_level) as mesh,
    ):
        assert get(mesh, mode=mode).status_code == 200
    assert seen.client_certs == ["frontend"]
    assert [scheme for scheme, _, _ in seen.requests] == ["https"]


def test_a_server_that_requires_a_client_certificate_refuses_simple(tmp_path: Path, pki: Pki) -> None:
    with (
        https_server(pki, require_client=True) as (port, seen),
        mesh_on(tmp_path, entry(port) + rule(simple(pki))) as mesh,
        pytest.raises(httpx.TransportError),
    ):
        get(mesh, headers={"x-api-key": "secret"})
    assert seen.sni, "the mesh did open TLS"
    assert set(seen.sni) == {HOST}
    assert seen.client_certs == []
    assert seen.requests == [], "the server refused it before any request"


def test_a_connection_opened_under_one_rules_tls_never_carries_anothers(tmp_path: Path, pki: Pki) -> None:
    """Two subsets of one endpoint, the same SNI, different CAs: the pooled connection that the
    first subset verified is not reused by the second, whose CA does not vouch for the server."""
    subsets = textwrap.dedent(f"""\
          subsets:
          - name: trusted
            labels: {{version: v1}}
            trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {pki.ca.cert_file}}}}}
          - name: distrusted
            labels: {{version: v1}}
            trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {pki.other_ca.cert_file}}}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: bank}}
        spec:
          hosts: [{HOST}]
          http:
          - match: [{{headers: {{x-subset: {{exact: distrusted}}}}}}]
            route: [{{destination: {{host: {HOST}, subset: distrusted}}}}]
          - route: [{{destination: {{host: {HOST}, subset: trusted}}}}]
        """)
    with (
        https_server(pki) as (port, seen),
        mesh_on(tmp_path, entry(port, labels="{version: v1}") + rule("{mode: SIMPLE}", subsets)) as mesh,
        mesh.http_client(timeout=5) as client,
    ):
        assert client.get(f"http://{HOST}/first").status_code == 200
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            client.get(f"http://{HOST}/second", headers={"x-subset": "distrusted"})
        assert client.get(f"http://{HOST}/third").status_code == 200
    assert [path for _, path, _ in seen.requests] == ["/first", "/third"]


# --- unusable files: a clear error, and nothing sent ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "content"),
    [("caCertificates", None), ("caCertificates", b"not a certificate\n"), ("privateKey", b"-----BEGIN")],
)
def test_an_unusable_file_fails_the_request_naming_field_and_file(
    tmp_path: Path, pki: Pki, field: str, content: bytes | None
) -> None:
    bad = tmp_path / "bad.pem"
    if content is not None:
        bad.write_bytes(content)
    files = {
        "caCertificates": str(pki.ca.cert_file),
        "clientCertificate": str(pki.client.cert_file),
        "privateKey": str(pki.client.key_file),
        field: str(bad),
    }
    tls = "{mode: MUTUAL, " + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    with (
        raw_server() as (port, received, connections),
        mesh_on(tmp_path, entry(port) + rule(tls)) as mesh,
        pytest.raises(httpx.ConnectError) as caught,
    ):
        get(mesh, headers={"x-api-key": "secret"})
    message = str(caught.value)
    assert f"tls.{field}" in message
    assert str(bad) in message
    assert "not sent" in message
    assert any(isinstance(e, CertificateUnavailableError) for e in _causes(caught.value)), "the cause"
    assert received == [], "not a byte reached the server"
    assert connections == [0], "no connection was even opened"


def _causes(error: BaseException) -> list[BaseException]:
    out = []
    while error.__cause__ is not None:
        error = error.__cause__
        out.append(error)
    return out


def test_credential_name_is_refused_at_validation() -> None:
    with pytest.raises(ConfigError, match=r"tls\.credentialName: names a Kubernetes secret") as caught:
        load_text(rule("{mode: MUTUAL, credentialName: bank-client}"))
    assert "clientCertificate, privateKey and caCertificates" in str(caught.value)


@pytest.mark.parametrize(
    ("tls", "path", "words"),
    [
        ("{mode: SIMPLE, clientCertificate: /c.pem}", "clientCertificate", "only with mode MUTUAL"),
        ("{mode: MUTUAL, caCertificates: /ca.pem}", "privateKey", "required with mode MUTUAL"),
        ("{sni: api.bank.example}", "sni", "DISABLE originates no TLS"),
        ("{mode: ISTIO_MUTUAL, subjectAltNames: [a.example]}", "subjectAltNames", "SPIFFE ID"),
        ("{mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem}", "caCertificates", "skips"),
    ],
)
def test_fields_that_would_change_nothing_are_refused(tls: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError, match=rf"tls\.{path}: .*{words}"):
        load_text(rule(tls))


def test_contexts_are_built_once_per_distinct_settings_and_rebuilt_when_a_file_changes(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshlib.tls_origination as origination
    from meshlib.policy.destination_rule import ClientTLSSettings

    built: list[ClientTLSSettings] = []

    def build(settings: ClientTLSSettings, material: origination.TlsMaterial) -> bytes | None:
        built.append(settings)
        return material.ca

    cache = origination.TlsOriginations(build)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.cert_file.read_bytes())
    one = ClientTLSSettings(mode="SIMPLE", ca_certificates=str(ca))
    again = ClientTLSSettings(mode="SIMPLE", ca_certificates=str(ca))  # a new snapshot's copy
    first = cache.get(one)
    assert cache.get(one) is first
    assert cache.get(again) is first
    assert len(built) == 1
    other = cache.get(ClientTLSSettings(mode="SIMPLE", ca_certificates=str(ca), sni="x.example"))
    assert other.key != first.key
    assert len(built) == 2

    monkeypatch.setattr(origination, "RECHECK", 0.0)
    first.recheck_at = 0.0
    ca.write_bytes(pki.other_ca.cert_file.read_bytes())  # rotated
    assert cache.get(one).current() == pki.other_ca.cert_file.read_bytes()
    assert first.generation == 2
    assert len(built) == 3
    ca.write_bytes(b"garbage")
    first.recheck_at = 0.0
    with pytest.raises(origination.TlsSettingsError, match="caCertificates"):
        cache.get(one)


# --- gRPC -------------------------------------------------------------------------------------------


SERVICE = "test.Bank"


@contextmanager
def grpc_tls_server(pki: Pki, require_client: bool = False) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A grpcio server on TLS with the bank's certificate; records each call's auth context."""
    calls: list[dict[str, Any]] = []

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        calls.append(dict(context.auth_context()))
        return b"ok:" + request

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(pki.server.key_file.read_bytes(), pki.server.cert_file.read_bytes())],
        root_certificates=pki.client_ca.cert_file.read_bytes() if require_client else None,
        require_client_auth=require_client,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port, calls
    finally:
        server.stop(0).wait()


def grpc_policy(port: int, tls: str) -> str:
    return entry(port, protocol="GRPC", number=50051) + rule(tls)


def call(mesh: Mesh, aio: bool = False) -> bytes:
    target = f"{HOST}:50051"
    method = f"/{SERVICE}/Unary"
    if not aio:
        with meshlib.grpc.channel(mesh, target) as channel:
            return bytes(channel.unary_unary(method)(b"hi", timeout=5))

    async def main() -> bytes:
        async with meshlib.grpc.aio_channel(mesh, target) as channel:
            return bytes(await channel.unary_unary(method)(b"hi", timeout=5))

    return asyncio.run(main())


@pytest.mark.parametrize("aio", [False, True])
def test_grpc_simple_originates_tls(tmp_path: Path, pki: Pki, aio: bool) -> None:
    with grpc_tls_server(pki) as (port, calls), mesh_on(tmp_path, grpc_policy(port, simple(pki))) as mesh:
        assert call(mesh, aio) == b"ok:hi"
    assert calls[0]["transport_security_type"] == [b"ssl"]


@pytest.mark.parametrize("aio", [False, True])
def test_grpc_mutual_presents_the_client_certificate(tmp_path: Path, pki: Pki, aio: bool) -> None:
    with (
        grpc_tls_server(pki, require_client=True) as (port, calls),
        mesh_on(tmp_path, grpc_policy(port, _mutual(pki))) as mesh,
    ):
        assert call(mesh, aio) == b"ok:hi"
    assert calls[0]["x509_common_name"] == [b"frontend"]


def test_grpc_refuses_a_server_from_another_ca(tmp_path: Path, pki: Pki) -> None:
    tls = f"{{mode: SIMPLE, caCertificates: {pki.other_ca.cert_file}}}"
    with (
        grpc_tls_server(pki) as (port, calls),
        mesh_on(tmp_path, grpc_policy(port, tls)) as mesh,
        pytest.raises(grpc.RpcError) as caught,
    ):
        call(mesh)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.details())
    assert calls == []


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("insecureSkipVerify: true", "insecureSkipVerify is not supported by gRPC clients"),
        ("subjectAltNames: [alias.bank.example]", f"must include the SNI name {HOST}"),
    ],
)
def test_grpc_refuses_what_grpcio_cannot_verify(tmp_path: Path, pki: Pki, extra: str, words: str) -> None:
    tls = "{mode: SIMPLE, " + extra + "}"
    with (
        grpc_tls_server(pki) as (port, calls),
        mesh_on(tmp_path, grpc_policy(port, tls)) as mesh,
        pytest.raises(grpc.RpcError, match=words) as caught,
    ):
        call(mesh)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert calls == []
