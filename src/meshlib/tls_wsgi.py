"""Mutual TLS for cheroot (``serve_wsgi``), per PeerAuthentication, on one port.

cheroot hands every accepted socket to its SSL adapter before anything is read. This
adapter peeks at the first byte: a TLS handshake is wrapped with the workload's live server
context and the verified peer's SPIFFE ID goes into the environ; plaintext is served under
PERMISSIVE and DISABLE, and answered with the reason and dropped under STRICT.
"""

from __future__ import annotations

import socket
from typing import Any

from cheroot import errors
from cheroot.ssl.builtin import BuiltinSSLAdapter

from .http.tls import peer_spiffe_id
from .mesh import Mesh
from .tls_server import STRICT_REFUSAL, TLS_HANDSHAKE, mode_for

__all__ = ["MeshSSLAdapter"]


class MeshSSLAdapter(BuiltinSSLAdapter):
    def __init__(self, mesh: Mesh, port: int) -> None:
        # BuiltinSSLAdapter.__init__ wants certificate files; the mesh's context is live instead.
        self.mesh = mesh
        self.port = port
        self.certificate = self.private_key = self.certificate_chain = None
        self.ciphers = None
        self.private_key_password = None
        self._server_env: dict[str, str] = {}  # SSL_SERVER_* entries: not needed by meshlib
        identity = mesh.workload_identity
        self.context = identity.server_context(require_client_cert=True) if identity is not None else None

    def wrap(self, sock: socket.socket) -> tuple[Any, dict[str, Any]]:
        try:
            first = sock.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            raise errors.FatalSSLAlert(*exc.args) from exc
        if not first:
            raise errors.FatalSSLAlert("the client closed the connection before sending anything")
        identity = self.mesh.workload_identity
        mode = mode_for(self.mesh, self.port)
        if first[0] == TLS_HANDSHAKE and identity is not None and mode != "DISABLE":
            self.context = identity.server_context(require_client_cert=True)
            wrapped, environ = super().wrap(sock)  # type: ignore[no-untyped-call]
            environ["meshlib.peer_spiffe_id"] = peer_spiffe_id(wrapped)
            return wrapped, environ
        if mode == "STRICT":
            _read_head(sock)
            sock.sendall(STRICT_REFUSAL)
            raise errors.FatalSSLAlert("plaintext refused: PeerAuthentication is STRICT")
        return sock, {}


def _read_head(sock: socket.socket, limit: int = 65536) -> None:
    """Read the request head, so that closing does not reset the connection under the answer."""
    seen = b""
    while b"\r\n\r\n" not in seen and len(seen) < limit:
        try:
            chunk = sock.recv(4096)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk
