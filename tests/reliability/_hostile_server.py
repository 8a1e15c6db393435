"""A meshlib server for the hostile-input tests, as its own process: serve_asgi, serve_wsgi or
meshlib.grpc.serve in static mode, with a short header timeout so that slow clients are
cut within the test's time (both timeouts come from the command line).

    python _hostile_server.py KIND PORT POLICY_FILE DATA_DIR HEADER_TIMEOUT IDLE_TIMEOUT

HTTP: every request's body is read to its end in 64 KiB pieces (never held whole) and
answered ``METHOD PATH BYTES``; on ``/ignore`` the body is not read at all (``BYTES`` is 0).
gRPC: every method answers the request's size in bytes.
"""

from __future__ import annotations

import sys
from typing import Any

import grpc

import meshlib
import meshlib.grpc

kind, port, policy, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
limits = meshlib.ServerLimits(header_timeout=float(sys.argv[5]), idle_timeout=float(sys.argv[6]))
mesh = meshlib.Mesh("reviews", config=policy, data_dir=data_dir)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    size = 0
    while scope["path"] != "/ignore":
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = f"{scope['method']} {scope['path']} {size}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    size = 0
    stream = environ["wsgi.input"]
    while environ["PATH_INFO"] != "/ignore" and (chunk := stream.read(65536)):
        size += len(chunk)
    body = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {size}".encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]


class AnyMethod(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: str(len(request)).encode())


if kind == "asgi":
    meshlib.serve_asgi(asgi_app, mesh=mesh, port=port, limits=limits, drain_delay=0.1, lifespan="off")
elif kind == "wsgi":
    meshlib.serve_wsgi(wsgi_app, mesh=mesh, port=port, limits=limits, drain_delay=0.1)
else:
    meshlib.grpc.serve(
        lambda server: server.add_generic_rpc_handlers((AnyMethod(),)),
        mesh=mesh,
        port=port,
        limits=limits,
        drain_delay=0.1,
    )
