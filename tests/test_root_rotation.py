"""A root rotation end to end, under load: the operator moves the mesh from root A to root B
in the three steps the README gives (distribute B, sign with B, drop A), restarting the
config service each time, while a client keeps calling a server. No request fails; old
and new roots are trusted side by side until every workload holds a certificate from B;
after A is dropped, a certificate from A is refused."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshlib.ca.svid import CaMaterial, issue_svid, key_id, make_ca
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from tests.test_mtls import (
    FRONTEND_ID,
    REVIEWS,
    client_context,
    endpoint_url,
    frontend,
    start_reviews,
    stop,
    wait_for,
)

TTL = 6.0  # seconds: each workload renews about every 3 s


def write_ca(material: CaMaterial, folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert.write_bytes(material.certificate.public_bytes(serialization.Encoding.PEM))
    assert isinstance(material.key, ec.EllipticCurvePrivateKey)
    key.write_bytes(
        material.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def pem(material: CaMaterial) -> str:
    return material.certificate.public_bytes(serialization.Encoding.PEM).decode()


def everyone_acked(server: ConfigServer, admin: ControlPlaneClient) -> bool:
    assert server.state is not None
    items = admin.workloads()["items"]
    return len(items) == 2 and all(w["ackedVersion"] == server.state.version for w in items)


def issuers(admin: ControlPlaneClient) -> dict[str, Any]:
    return {
        w["registration"]["service"]: w["registration"]["certificateIssuer"]
        for w in admin.workloads()["items"]
    }


def test_root_rotation_under_load_fails_no_request(tmp_path: Path) -> None:
    root_a, root_b = make_ca("cluster.local"), make_ca("cluster.local")
    a_cert, a_key = write_ca(root_a, tmp_path, "root-a")
    b_cert, b_key = write_ca(root_b, tmp_path, "root-b")
    both = tmp_path / "a-and-b.pem"
    both.write_text(pem(root_a) + pem(root_b))
    data = tmp_path / "cp"

    # A client certificate from each root, to knock on the server's door directly.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    from_a = issue_svid(root_a, csr, FRONTEND_ID, dt.timedelta(hours=1))
    from_b = issue_svid(root_b, csr, FRONTEND_ID, dt.timedelta(hours=1))

    server = ConfigServer(data, ca_cert=a_cert, ca_key=a_key).start()
    port = server.port
    admin = ControlPlaneClient(server.url, server.admin_token)
    proc = start_reviews(server, admin, tmp_path, ttl=TTL)
    outcomes: list[str] = []
    done = threading.Event()

    def restart(cert: Path, key: Path, bundle: Path | None) -> ConfigServer:
        server.stop()
        return ConfigServer(data, port=port, ca_cert=cert, ca_key=key, ca_bundle=bundle).start()

    def knock(cert: x509.Certificate, mesh_url: str) -> bool:
        roots = [pem(root_a), pem(root_b)]
        try:
            response = httpx.get(f"https://{mesh_url}/", verify=client_context(roots, cert, key, tmp_path))
        except httpx.TransportError:
            return False
        return bool(response.json()["peer"] == FRONTEND_ID)

    try:
        with frontend(server, admin, tmp_path, certificate_ttl=TTL) as mesh:
            identity = mesh.workload_identity
            assert identity is not None
            assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS))), stop(proc)
            assert wait_for(
                lambda: (
                    issuers(admin)
                    == {"frontend": key_id(root_a.certificate)} | {"reviews": key_id(root_a.certificate)}
                )
            )

            def load() -> None:
                with mesh.http_client() as client:
                    for _ in range(3000):  # about 50 requests/s, bounded in count and time
                        if done.is_set():
                            return
                        try:
                            peer = client.get("http://reviews/").json()["peer"]
                            outcomes.append("ok" if peer == FRONTEND_ID else f"peer {peer}")
                        except httpx.HTTPError as exc:
                            outcomes.append(repr(exc))
                        time.sleep(0.02)

            worker = threading.Thread(target=load)
            worker.start()

            # 1. Distribute root B while A still signs.
            server = restart(a_cert, a_key, both)
            assert wait_for(lambda: identity.roots == [pem(root_a), pem(root_b)], 30)
            assert wait_for(lambda: everyone_acked(server, admin), 30), admin.workloads()
            assert identity.issuer == key_id(root_a.certificate)

            # 2. Sign with B; both roots stay trusted until every workload holds a B certificate.
            server = restart(b_cert, b_key, both)
            b_id = key_id(root_b.certificate)
            assert wait_for(lambda: issuers(admin) == {"frontend": b_id, "reviews": b_id}, 30), issuers(admin)
            assert identity.issuer == b_id
            url = endpoint_url(mesh)
            assert knock(from_a, url), "root A is still trusted during the rotation"
            assert knock(from_b, url)

            # 3. Drop root A.
            server = restart(b_cert, b_key, b_cert)
            assert wait_for(lambda: identity.roots == [pem(root_b)], 30)
            assert wait_for(lambda: everyone_acked(server, admin), 30), admin.workloads()
            assert not knock(from_a, url), "a certificate from the dropped root is refused"
            assert knock(from_b, url)
            time.sleep(1.0)  # a little more load on the final bundle
            done.set()
            worker.join(30)
            failures = [o for o in outcomes if o != "ok"]
            assert failures == [], failures[:5]
            assert len(outcomes) > 100
    finally:
        done.set()
        stop(proc)
        admin.close()
        server.stop()
