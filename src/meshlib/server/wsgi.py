"""``meshlib.wsgi.MeshMiddleware``: the mesh's inbound stack for any WSGI application.

    app.wsgi_app = meshlib.wsgi.MeshMiddleware(app.wsgi_app, mesh=mesh)   # Flask
    application = meshlib.wsgi.MeshMiddleware(application, mesh=mesh)     # any WSGI app

The same stack as the ASGI middleware: health probes, the caller's deadline (504 without
running the app when it has passed), peer identity (``environ["meshlib.peer"]`` and
``meshlib.current_peer()``), inbound metrics; ``HTTP_X_FORWARDED_CLIENT_CERT`` from the
network is removed before the application sees the environ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from ..core.call import Call
from ..core.paths import PathError, normalize_path, requote, split_target
from ..core.server_stack import Answer, Inbound
from ..drivers import InboundRequest, ServingMesh
from ..peer import PeerIdentity, peer_identity

__all__ = ["MeshMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class MeshMiddleware:
    def __init__(self, app: WSGIApp, mesh: ServingMesh) -> None:
        self.app = app
        self.mesh = mesh

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        environ.pop("HTTP_X_FORWARDED_CLIENT_CERT", None)
        peer = peer_from_environ(environ)
        environ["meshlib.peer"] = peer
        path, path_error = normalized_environ_path(environ)
        call = Call(
            method=environ.get("REQUEST_METHOD", "GET"),
            scheme=environ.get("wsgi.url_scheme", "http"),
            host=environ.get("SERVER_NAME", ""),
            port=int(environ["SERVER_PORT"]) if str(environ.get("SERVER_PORT", "")).isdigit() else None,
            path=path,
            query=environ.get("QUERY_STRING", ""),
            header=_EnvironHeaders(environ),
        )
        inbound = InboundRequest(
            self.mesh,
            call,
            peer,
            source_ip=environ.get("REMOTE_ADDR") or None,
            destination_ip=environ.get("meshlib.local_ip") or environ.get("SERVER_ADDR") or None,
            sni=environ.get("meshlib.sni"),
            path_error=path_error,
        )
        answer = inbound.admit()
        if answer is not None:
            return _respond(start_response, answer)
        for name, value in inbound.ex.header_edits or ():  # a verified JWT's outputs
            key = "HTTP_" + name.upper().replace("-", "_")
            environ.pop(key, None)
            if value is not None:
                environ[key] = value
        status = [500]

        def watch_status(status_line: str, headers: Any, exc_info: Any = None) -> Any:
            status[0] = int(status_line.split(" ", 1)[0])
            return (
                start_response(status_line, headers, exc_info)
                if exc_info
                else start_response(status_line, headers)
            )

        try:
            with inbound.scope():
                body = self.app(environ, watch_status)
        except BaseException:
            inbound.end(500)
            raise
        if isinstance(body, list | tuple):  # the whole answer is made: count it now
            inbound.ex.response_bytes = sum(len(chunk) for chunk in body)
            inbound.end(status[0])
            return body
        # A body still being produced: counted when the server closes it (its whole duration).
        return _Counted(body, inbound.ex, lambda: inbound.end(status[0]))


class _Counted:
    """The application's body, and the end of the request when the server closes it (PEP 3333)."""

    __slots__ = ("_body", "_done", "_ex")

    def __init__(self, body: Iterable[bytes], ex: Inbound, done: Callable[[], object]) -> None:
        self._body = body
        self._ex = ex
        self._done = done

    def __iter__(self) -> Iterator[bytes]:
        ex = self._ex
        for chunk in self._body:
            ex.response_bytes += len(chunk)  # istio_response_bytes
            yield chunk

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._done()


class _EnvironHeaders:
    __slots__ = ("_environ",)

    def __init__(self, environ: Environ) -> None:
        self._environ = environ

    def __call__(self, name: str) -> str | None:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            value = self._environ.get(key)
        else:
            value = self._environ.get("HTTP_" + key)
        return value if isinstance(value, str) else None


def _respond(start_response: StartResponse, answer: Answer) -> list[bytes]:
    headers = [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))]
    headers.extend(answer.headers)
    start_response(f"{answer.status} {_REASONS.get(answer.status, 'Unknown')}", headers)
    return [answer.body]


# Every standard status the stack may answer with (400 bad path, 401 JWT, 403, 413, 429, 431,
# 503, 504...), built once: the standard phrases.
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def normalized_environ_path(environ: Environ) -> tuple[str, str | None]:
    """The request's normalized path, also what the application gets (``PATH_INFO``, and
    ``REQUEST_URI``/``RAW_URI`` where the server set them); with the reason when it cannot
    be normalized (the stack answers 400). From the raw target when the server keeps it
    (cheroot, gunicorn): ``PATH_INFO`` has ``%2F`` already decoded into a ``/``."""
    raw_key = "REQUEST_URI" if "REQUEST_URI" in environ else "RAW_URI" if "RAW_URI" in environ else None
    target = environ.get(raw_key, "") if raw_key else ""
    info = environ.get("PATH_INFO", "") or "/"
    if not (isinstance(target, str) and target.startswith("/")) or environ.get("SCRIPT_NAME"):
        target = requote(info.encode("latin-1", "replace"))
    original, query = split_target(target)
    try:
        path = normalize_path(original)
    except PathError as exc:
        return original, str(exc)
    decoded = unquote_to_bytes(path).decode("latin-1")
    if decoded != info:
        environ["PATH_INFO"] = decoded
        if raw_key:
            environ[raw_key] = path + (f"?{query}" if query else "")
    return path, None


def peer_from_environ(environ: Environ) -> PeerIdentity | None:
    """The caller's identity from the verified client certificate (issue #6 fills it in)."""
    spiffe = environ.get("meshlib.peer_spiffe_id")
    return peer_identity(spiffe) if isinstance(spiffe, str) else None
