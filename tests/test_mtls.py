"""Mutual TLS between real processes: identities from the mesh CA, PeerAuthentication modes,
refused certificates, and certificate rotation under load."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshlib import Mesh
from meshlib.ca.svid import issue_svid, make_ca
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from meshlib.policy.resources import ResourceKey
from tests.servers import wait_for

REVIEWS = "reviews.default.svc.cluster.local"
FRONTEND_ID = "spiffe://cluster.local/ns/default/sa/frontend"

REPLICA = textwrap.dedent("""\
    import os, sys, json
    import meshlib

    kind = os.environ.get("KIND", "asgi")
    mesh = meshlib.Mesh("reviews", control_plane=sys.argv[1], token=os.environ["TOKEN"], data_dir=sys.argv[2],
                        certificate_ttl=float(os.environ.get("CERT_TTL", "0")) or None)

    def body():
        peer = meshlib.current_peer()
        cert = mesh.workload_identity.certificate
        return json.dumps({"peer": str(peer) if peer else None, "serial": cert.serial_number}).encode()

    async def asgi_app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body()})

    def wsgi_app(environ, start_response):
        payload = body()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response("200 OK", headers)
        return [payload]

    if kind == "asgi":
        meshlib.serve_asgi(asgi_app, mesh=mesh, port=0, drain_delay=0.2)
    else:
        meshlib.serve_wsgi(wsgi_app, mesh=mesh, port=0, drain_delay=0.2)
""")


@pytest.fixture
def mesh_ca(tmp_path: Path) -> Iterator[tuple[ConfigServer, ControlPlaneClient]]:
    with ConfigServer(tmp_path / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
        yield server, admin


def start_reviews(
    server: ConfigServer,
    admin: ControlPlaneClient,
    tmp_path: Path,
    ttl: float | None = None,
    kind: str = "asgi",
) -> subprocess.Popen[str]:
    script = tmp_path / "reviews.py"
    script.write_text(REPLICA)
    env = {
        **os.environ,
        "TOKEN": admin.create_token("reviews")["token"],
        "PYTHONUNBUFFERED": "1",
        "CERT_TTL": str(ttl or 0),
        "KIND": kind,
    }
    return subprocess.Popen(
        [sys.executable, str(script), server.url, str(tmp_path / "reviews")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    return proc.stdout.read() if proc.stdout else ""


def frontend(server: ConfigServer, admin: ControlPlaneClient, tmp_path: Path, **options: object) -> Mesh:
    token = admin.create_token("frontend")["token"]
    return Mesh("frontend", control_plane=server.url, token=token, data_dir=tmp_path / "frontend", **options)  # type: ignore[arg-type]


def endpoint_url(mesh: Mesh) -> str:
    (endpoint,) = mesh.snapshot.endpoints(REVIEWS)
    return f"{endpoint.address}:{endpoint.port}"


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_mesh_calls_carry_the_callers_verified_identity(mesh_ca, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    server, admin = mesh_ca
    proc = start_reviews(server, admin, tmp_path, kind=kind)
    try:
        with frontend(server, admin, tmp_path) as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            (endpoint,) = mesh.snapshot.endpoints(REVIEWS)
            assert endpoint.tls
            assert endpoint.identity == "spiffe://cluster.local/ns/default/sa/reviews"
            with mesh.http_client() as client:
                body = client.get("http://reviews/").json()
            assert body["peer"] == FRONTEND_ID, "the server saw our certificate's SPIFFE ID"
            # A plain client under the default PERMISSIVE mode: served, but with no identity.
            plain = httpx.get(f"http://{endpoint_url(mesh)}/").json()
            assert plain["peer"] is None
            probe = httpx.get(f"http://{endpoint_url(mesh)}/.well-known/meshlib/ready")
            assert probe.status_code == 200
            report = probe.json()
            assert report["ready"] is True
            assert report["identity"] == "spiffe://cluster.local/ns/default/sa/reviews"
            assert report["certificateExpires"] is not None, "readiness shows the certificate's expiry"
            health = mesh.health()
            assert health["identity"] == FRONTEND_ID
            assert health["certificateExpires"] is not None
            status = {w["registration"]["service"]: w for w in admin.workloads()["items"]}
            assert status["frontend"]["registration"]["certificateExpires"] is not None
    finally:
        stop(proc)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_strict_refuses_plaintext_and_says_why(mesh_ca, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    server, admin = mesh_ca
    admin.apply(
        [
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            }
        ]
    )
    proc = start_reviews(server, admin, tmp_path, kind=kind)
    try:
        with frontend(server, admin, tmp_path) as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            refused = httpx.get(f"http://{endpoint_url(mesh)}/")
            assert refused.status_code == 403
            assert "mutual TLS required" in refused.text
            assert "STRICT" in refused.text
            with mesh.http_client() as client:
                assert client.get("http://reviews/").json()["peer"] == FRONTEND_ID, "mTLS still works"
    finally:
        stop(proc)


def client_context(
    roots: list[str], cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> ssl.SSLContext:
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata="".join(roots))
    context.load_cert_chain(cert_file, key_file)
    return context


def test_foreign_and_expired_client_certificates_are_refused(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, admin = mesh_ca
    proc = start_reviews(server, admin, tmp_path)
    roots = httpx.get(f"{server.url}/v1/trust-bundle").json()["roots"]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    foreign = issue_svid(make_ca("cluster.local"), csr, FRONTEND_ID, dt.timedelta(hours=1))
    try:
        token = admin.create_token("frontend")["token"]
        with Mesh("frontend", control_plane=server.url, token=token, data_dir=tmp_path / "f") as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            url = f"https://{endpoint_url(mesh)}/"
            # TLS 1.3: the client's handshake ends before the server checks its certificate, so
            # the refusal shows up as the server dropping the connection: no response either way.
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=client_context(roots, foreign, key, tmp_path))
            # A certificate from the mesh CA itself, but expired: made with the CA's own key.
            from meshlib.ca.authority import CertificateAuthority

            ca = CertificateAuthority.load_or_create(server.data_dir, "cluster.local")
            expired = issue_svid(
                ca.material,
                csr,
                FRONTEND_ID,
                dt.timedelta(hours=1),
                now=dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
            )
            with pytest.raises(httpx.TransportError):
                httpx.get(url, verify=client_context(roots, expired, key, tmp_path))
            valid = issue_svid(ca.material, csr, FRONTEND_ID, dt.timedelta(hours=1))
            assert (
                httpx.get(url, verify=client_context(roots, valid, key, tmp_path)).json()["peer"]
                == FRONTEND_ID
            )
    finally:
        stop(proc)


def test_rotation_under_200_rps_fails_no_request(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, admin = mesh_ca
    proc = start_reviews(server, admin, tmp_path, ttl=3.0)
    try:
        with frontend(server, admin, tmp_path, certificate_ttl=3.0) as mesh:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            identity = mesh.workload_identity
            assert identity is not None
            assert identity.certificate is not None
            first_serial = identity.certificate.serial_number
            outcomes: list[str] = []
            server_serials: set[int] = set()

            def load() -> None:
                with mesh.http_client() as client:
                    started = time.monotonic()
                    for i in range(1200):  # 200 requests/s for 6 s: about 4 rotations on each side
                        try:
                            body = client.get("http://reviews/").json()
                            outcomes.append("ok" if body["peer"] == FRONTEND_ID else f"peer {body['peer']}")
                            server_serials.add(body["serial"])
                        except httpx.HTTPError as exc:
                            outcomes.append(repr(exc))
                        time.sleep(max(0.0, started + (i + 1) / 200 - time.monotonic()))

            worker = threading.Thread(target=load)
            worker.start()
            worker.join(60)
            failures = [o for o in outcomes if o != "ok"]
            assert len(outcomes) == 1200
            assert failures == []
            assert identity.certificate.serial_number != first_serial, "the client certificate rotated"
            assert len(server_serials) >= 2, "the server certificate rotated"
    finally:
        stop(proc)


def test_strict_fails_closed_after_expiry_and_recovers_when_the_ca_is_back(tmp_path: Path) -> None:
    """Config service down: certificates expire; a STRICT server never falls back to
    plaintext (a client without a valid certificate is refused, and nobody accepts the
    server's expired one); renewal resumes once the CA is back."""
    data = tmp_path / "cp"
    server = ConfigServer(data).start()
    port = server.port
    admin = ControlPlaneClient(server.url, server.admin_token)
    admin.apply(
        [
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system"},
                "spec": {"mtls": {"mode": "STRICT"}},
            }
        ]
    )
    proc = start_reviews(server, admin, tmp_path, ttl=3.0)
    roots = httpx.get(f"{server.url}/v1/trust-bundle").json()["roots"]
    from meshlib.ca.authority import CertificateAuthority

    ca = CertificateAuthority.load_or_create(data, "cluster.local")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    fresh = issue_svid(ca.material, csr, FRONTEND_ID, dt.timedelta(hours=1))
    try:
        with frontend(server, admin, tmp_path, certificate_ttl=3.0) as mesh, mesh.http_client() as client:
            identity = mesh.workload_identity
            assert identity is not None
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            assert client.get("http://reviews/").json()["peer"] == FRONTEND_ID
            url = endpoint_url(mesh)

            server.stop()  # no renewals from here on
            assert wait_for(lambda: not identity.valid(), 10), "the frontend's certificate expired"
            # The server renewed on its own schedule (half-life plus jitter), so its last
            # certificate may outlive the frontend's by up to a TTL: wait for it explicitly.
            saved = (tmp_path / "reviews" / "cert.pem").read_bytes()
            served_until = x509.load_pem_x509_certificates(saved)[0]
            left = (served_until.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
            assert left < 4.0, "the server's certificate is one of the 3 s ones"
            time.sleep(max(0.0, left) + 0.2)
            # The frontend never falls back to plaintext: it refuses to send, and says why.
            with pytest.raises(
                httpx.ConnectError, match=r"certificate expired at .* not sending in plaintext"
            ):
                client.get("http://reviews/")
            assert mesh.metrics.requests_total(code=0) >= 1
            refused = httpx.get(f"http://{url}/")  # a client that does send plaintext
            assert refused.status_code == 403, "STRICT refuses plaintext"
            assert "mutual TLS required" in refused.text
            with pytest.raises(httpx.TransportError):  # a valid client refuses the expired server
                httpx.get(f"https://{url}/", verify=client_context(roots, fresh, key, tmp_path))

            server = ConfigServer(data, port=port).start()
            assert wait_for(lambda: identity.valid(), 40), "renewal resumed when the CA came back"

            def served() -> bool:
                try:
                    return bool(client.get("http://reviews/").json()["peer"] == FRONTEND_ID)
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

            assert wait_for(served, 40), "the server renewed too: mTLS works again"
    finally:
        stop(proc)
        admin.close()
        server.stop()


def peer_auth(name: str, namespace: str, spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_scopes_narrowest_wins_port_level_modes_and_tls_disable_on_the_wire(mesh_ca, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On real connections: a workload's PeerAuthentication beats the namespace's, which beats the
    mesh's; a port-level mode beats the workload's; DestinationRule tls.mode DISABLE sends plaintext."""
    server, admin = mesh_ca
    admin.apply([peer_auth("default", "istio-system", {"mtls": {"mode": "STRICT"}})])
    workload_permissive = peer_auth(
        "reviews",
        "default",
        {"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "PERMISSIVE"}},
    )
    admin.apply([workload_permissive])
    proc = start_reviews(server, admin, tmp_path)
    try:
        with frontend(server, admin, tmp_path) as mesh, mesh.http_client() as client:
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            url = endpoint_url(mesh)
            port = int(url.rsplit(":", 1)[1])

            def plain_status() -> int:
                return httpx.get(f"http://{url}/").status_code

            assert plain_status() == 200, "the workload's PERMISSIVE beats the mesh's STRICT"
            assert client.get("http://reviews/").json()["peer"] == FRONTEND_ID

            admin.apply([peer_auth("default", "default", {"mtls": {"mode": "PERMISSIVE"}})])
            admin.delete(ResourceKey("PeerAuthentication", "default", "reviews"))
            assert wait_for(lambda: mesh.version >= 4)
            assert wait_for(lambda: plain_status() == 200), "the namespace's PERMISSIVE beats the mesh's"

            strict_but_port = peer_auth(
                "reviews",
                "default",
                {
                    "selector": {"matchLabels": {"app": "reviews"}},
                    "mtls": {"mode": "STRICT"},
                    "portLevelMtls": {str(port): {"mode": "PERMISSIVE"}},
                },
            )
            version = admin.apply([strict_but_port])["version"]

            def reviews_has(version: int) -> bool:
                acked = [
                    w["ackedVersion"]
                    for w in admin.workloads()["items"]
                    if w["registration"]["service"] == "reviews"
                ]
                return bool(acked) and (acked[0] or 0) >= version

            assert wait_for(lambda: reviews_has(version)), "the server runs on the new policy"
            assert plain_status() == 200, "the port-level PERMISSIVE beats the workload's STRICT"
            without_ports = {k: v for k, v in strict_but_port["spec"].items() if k != "portLevelMtls"}  # type: ignore[attr-defined]
            admin.apply([{**strict_but_port, "spec": without_ports}])
            assert wait_for(lambda: plain_status() == 403), "the workload's STRICT beats the namespace's"

            admin.apply(
                [
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "DestinationRule",
                        "metadata": {"name": "reviews", "namespace": "default"},
                        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": "DISABLE"}}},
                    }
                ]
            )
            assert wait_for(lambda: client.get("http://reviews/").status_code == 403), (
                "tls.mode DISABLE: the mesh client sends plaintext, which STRICT refuses"
            )
            admin.apply([workload_permissive])
            assert wait_for(lambda: client.get("http://reviews/").status_code == 200)
            assert client.get("http://reviews/").json()["peer"] is None, "plaintext carries no identity"
    finally:
        stop(proc)


def test_a_certificate_saved_from_another_ca_is_replaced_at_start(tmp_path: Path) -> None:
    """The workload's data dir outlives a config service (its data replaced, a new CA): the saved
    certificate, still fresh, is not presented to peers who trust only the new CA."""
    data = tmp_path / "wl"
    for name in ("first", "second"):
        with (
            ConfigServer(tmp_path / name) as server,
            ControlPlaneClient(server.url, server.admin_token) as admin,
        ):
            token = admin.create_token("frontend")["token"]
            roots = httpx.get(f"{server.url}/v1/trust-bundle").json()["roots"]
            with Mesh("frontend", control_plane=server.url, token=token, data_dir=data) as mesh:
                identity = mesh.workload_identity
                assert identity is not None
                assert identity.valid()
                assert identity.anchored(roots), f"{name}: the certificate chains to this CA"
