"""A mesh workload in its own process for the control-plane scenarios: ``meshlib.serve_asgi``
watching a config service, with meshlib's logging at DEBUG on stderr.

    MESH_SERVICE=reviews MESH_CONTROL_PLANE=... MESH_TOKEN=... MESH_DATA_DIR=... python _workload.py

``CERT_TTL`` (seconds) asks the CA for certificates that short. Every answer is JSON:
``service``, ``version`` (its label), ``peer`` (the caller's verified SPIFFE ID),
``peerSerial`` (the serial number of the client certificate this connection's handshake
verified, from the ASGI TLS extension), ``serial`` (its own certificate's) and
``configVersion`` (the policy version it runs). Also runs on older meshlib releases
(test_control_plane.py starts one from a ``git archive``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

from cryptography import x509

import meshlib

logging.basicConfig(
    level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
)
ttl = float(os.environ.get("CERT_TTL", "0"))
options: dict[str, Any] = {"certificate_ttl": ttl} if ttl else {}
mesh = meshlib.Mesh.from_env(**options)


def peer_serial(scope: MutableMapping[str, Any]) -> int | None:
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    return x509.load_pem_x509_certificate(chain[0].encode()).serial_number if chain else None


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    peer = meshlib.current_peer()
    identity = mesh.workload_identity
    cert = identity.certificate if identity is not None else None
    body = json.dumps(
        {
            "service": mesh.service,
            "version": mesh.labels.get("version"),
            "peer": str(peer) if peer else None,
            "peerSerial": peer_serial(scope),
            "serial": cert.serial_number if cert is not None else None,
            "configVersion": mesh.version,
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


meshlib.serve_asgi(app, mesh=mesh, port=0, drain_delay=0.2)
