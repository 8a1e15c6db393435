"""``meshlib.asgi.MeshMiddleware``: the mesh's inbound stack for any ASGI application.

    app.add_middleware(meshlib.asgi.MeshMiddleware, mesh=mesh)    # Starlette / FastAPI
    app = meshlib.asgi.MeshMiddleware(app, mesh=mesh)             # any ASGI app

Per HTTP request: health probes on reserved paths, the caller's deadline (an expired
request gets 504 and never reaches the app; otherwise it bounds the app's outbound mesh
calls), the verified peer identity for handlers (``scope["meshlib.peer"]`` and
``meshlib.current_peer()``), inbound metrics. ``x-forwarded-client-cert`` arriving from
the network is removed: identity comes only from the verified peer certificate.
Websockets pass through with the same header hygiene; lifespan passes through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from ..core.call import Call, RawHeaders
from ..core.paths import PathError, normalize_path, requote, split_target
from ..core.server_stack import Answer, edited_headers
from ..drivers import AsyncInboundRequest, ServingMesh
from ..peer import PeerIdentity, peer_identity, reset_peer, set_peer

__all__ = ["MeshMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_XFCC = b"x-forwarded-client-cert"


class MeshMiddleware:
    def __init__(self, app: ASGIApp, mesh: ServingMesh) -> None:
        self.app = app
        self.mesh = mesh

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan and anything newer
            return
        headers = scope["headers"]
        if any(name == _XFCC for name, _ in headers):
            scope = dict(scope)
            scope["headers"] = [(n, v) for n, v in headers if n != _XFCC]
        peer = peer_from_scope(scope)
        scope["meshlib.peer"] = peer
        if kind == "http":
            await self._http(scope, receive, send, peer)
            return
        token = set_peer(peer)
        try:
            await self.app(scope, receive, send)
        finally:
            reset_peer(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, peer: PeerIdentity | None) -> None:
        server = scope.get("server") or ("", None)
        client = scope.get("client")
        query = scope.get("query_string", b"")
        path, path_error = normalized_scope_path(scope)
        call = Call(
            method=scope["method"],
            scheme=scope.get("scheme", "http"),
            host=str(server[0] or ""),
            port=server[1],
            path=path,
            query=query.decode("latin-1") if query else "",
            header=RawHeaders(scope["headers"]),
        )
        tls = (scope.get("extensions") or {}).get("tls") or {}
        inbound = AsyncInboundRequest(
            self.mesh,
            call,
            peer,
            source_ip=client[0] if client else None,
            destination_ip=server[0] or None,
            sni=tls.get("meshlib.sni"),
            path_error=path_error,
        )
        answer = await inbound.admit_async()
        if answer is not None:
            await _respond(send, answer)
            return
        edits = inbound.ex.header_edits
        if edits:  # a verified JWT: the token removed, claims and payload added
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            scope["headers"] = [
                (k.encode("latin-1"), v.encode("latin-1")) for k, v in edited_headers(pairs, edits)
            ]
        status = 500
        started = False

        async def watch_status(message: Message) -> None:
            nonlocal status, started
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                started = True
            elif kind == "http.response.body":
                inbound.ex.response_bytes += len(message.get("body", b""))
                if not message.get("more_body", False):
                    inbound.end(status)  # counted before the last bytes leave: the caller sees it
            await send(message)

        try:
            with inbound.scope():
                await self.app(scope, receive, watch_status)
        except BaseException:
            inbound.end(status if started else 500)
            raise
        inbound.end(status if started else 500)  # no body sent (or the app ended without one)


async def _respond(send: Send, answer: Answer) -> None:
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    headers.extend((k.encode(), v.encode()) for k, v in answer.headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})


def normalized_scope_path(scope: Scope) -> tuple[str, str | None]:
    """The request's normalized path, set in the scope for the application too (``path`` and
    ``raw_path``); with the reason when it cannot be normalized (the stack answers 400)."""
    raw = scope.get("raw_path")
    target = raw.decode("latin-1") if isinstance(raw, bytes) else requote(scope["path"])
    original = split_target(target)[0]
    try:
        path = normalize_path(original)
    except PathError as exc:
        return original, str(exc)
    if path != original or not isinstance(raw, bytes):
        scope["path"] = unquote(path)
        scope["raw_path"] = path.encode("latin-1")
    return path, None


def peer_from_scope(scope: Scope) -> PeerIdentity | None:
    """The caller's identity from the verified client certificate of the TLS connection.

    Only the ASGI TLS extension (filled by meshlib's own server) counts; with plaintext
    there is no identity. Issue #6 (mTLS) supplies the certificate."""
    tls = (scope.get("extensions") or {}).get("tls")
    if not tls:
        return None
    spiffe = tls.get("meshlib.peer_spiffe_id")
    return peer_identity(spiffe) if isinstance(spiffe, str) else None
