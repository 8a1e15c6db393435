"""Certificate rotation every couple of seconds under load, STRICT mTLS: no request fails, and
the client certificates the server verifies on its connections really are the new ones."""

from __future__ import annotations

import threading
from pathlib import Path

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer
from tests.reliability._controlplane import REVIEWS, STRICT, Traffic, WorkloadProcess
from tests.servers import wait_for

# Seconds. Certificates start 10% of their life early (clock skew) and renew half-way through
# it, give or take 5% (workload_identity.py): with 4 s one rotation every 1.8 s, about 5 in 9 s.
TTL = 4.0
LOAD = 9.0


def test_certificates_rotate_under_load_and_the_server_sees_each_new_one(tmp_path: Path) -> None:
    with (
        ConfigServer(tmp_path / "cp") as server,
        ControlPlaneClient(server.url, server.admin_token) as admin,
    ):
        admin.apply([STRICT])
        reviews = WorkloadProcess(
            "reviews", server.url, admin.create_token("reviews")["token"], tmp_path / "reviews", ttl=TTL
        ).start()
        token = admin.create_token("frontend")["token"]
        try:
            frontend = tmp_path / "frontend"
            with Mesh(
                "frontend", control_plane=server.url, token=token, data_dir=frontend, certificate_ttl=TTL
            ) as mesh:
                identity = mesh.workload_identity
                assert identity is not None
                assert wait_for(lambda: bool(mesh.snapshot.endpoints(REVIEWS)), 30), reviews.log
                held: set[int] = set()  # every certificate the frontend held during the load
                done = threading.Event()

                def watch_certificate() -> None:
                    while not done.is_set():
                        if identity.certificate is not None:
                            held.add(identity.certificate.serial_number)
                        done.wait(0.01)

                watcher = threading.Thread(target=watch_certificate, daemon=True)
                watcher.start()
                with (
                    Traffic(mesh, "http://reviews/", 30, limit=int(LOAD * 30)) as pooled,
                    Traffic(mesh, "http://reviews/", 10, limit=int(LOAD * 10), close=True) as handshakes,
                ):
                    assert pooled.finished(LOAD + 20)
                    assert handshakes.finished(5)
                done.set()
                watcher.join(5)
                assert pooled.failures == [], pooled.failures[:5]
                assert handshakes.failures == [], handshakes.failures[:5]
                # A connection per request: the server verified each certificate the client rotated to.
                seen = {body["peerSerial"] for body in handshakes.bodies}
                assert None not in seen, "the ASGI TLS extension carries the client certificate"
                assert seen <= held, "the server saw only certificates the client held"
                assert len(held) >= 4, f"the client rotated {len(held) - 1} times in {LOAD:.0f}s"
                assert len(seen) >= 3, f"the server verified {len(seen)} client certificates"
                # Pooled connections keep the certificate of their handshake (as in Envoy): still valid.
                assert {body["peerSerial"] for body in pooled.bodies} <= held
                served = {body["serial"] for body in pooled.bodies + handshakes.bodies}
                assert len(served) >= 3, f"the server rotated {len(served) - 1} times"
                requests = len(pooled.outcomes) + len(handshakes.outcomes)
                print(
                    f"{requests} requests ({len(handshakes.outcomes)} on a new connection each), 0 failed; "
                    f"client certificates held {len(held)}, verified by the server {len(seen)}; "
                    f"server certificates {len(served)}"
                )
        finally:
            reviews.stop()
