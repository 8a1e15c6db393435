"""Real servers for tests: any ASGI app under uvicorn on a free port of 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from meshlib._net import bind
from meshlib._net import free_port as free_port  # re-exported: the tests import it from here

Scope = dict[str, Any]


@contextmanager
def serve(app: Any) -> Iterator[int]:
    """Run ``app`` with uvicorn on 127.0.0.1:<free port> in a thread; yield the port."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1, backlog=2048)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Backend:
    """A tiny HTTP service whose behaviour tests change on the fly.

    Answers ``{"name": ..., "path": ..., "headers": ...}``; ``status`` forces a status,
    ``fail_rate`` answers 503 to that share of requests, ``delay`` waits first.
    """

    name: str
    status: int = 200
    fail_rate: float = 0.0
    delay: float = 0.0
    gate: threading.Event | None = None  # when set: every answer waits until it is opened
    hits: int = 0
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    clients: list[tuple[str, int] | None] = field(default_factory=list)  # the caller's address, per request
    # Seeded by name: replicas sharing one seed would fail in lockstep (a retry that moves
    # to the next replica draws the same number), so a 30% failure rate would not be
    # independent per attempt.
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"backend-{self.name}")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.hits += 1
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        path = scope["path"] + (("?" + scope["query_string"].decode()) if scope["query_string"] else "")
        self.seen.append((scope["method"], path, headers))
        client = scope.get("client")
        self.clients.append(tuple(client) if client else None)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.gate is not None:
            await asyncio.to_thread(self.gate.wait, 30)
        status = self.status
        if status == 200 and self.fail_rate and self.rng.random() < self.fail_rate:
            status = 503
        payload = ('{{"name": "{}", "path": "{}"}}'.format(self.name, scope["path"])).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"x-backend", self.name.encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def wait_for(condition: Any, timeout: float = 15.0) -> bool:
    """Poll ``condition()`` until it holds or ``timeout`` passes (bounded: never hangs a test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def service_entry_policy(folder: Any, host: str, port: int) -> Any:
    """A policy folder declaring ``host`` at 127.0.0.1:``port`` (static mode)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{host}.yaml").write_text(
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {host}}}\n"
        f"spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        f"  ports: [{{number: 80, name: http}}]\n"
        f"  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}}}]\n"
    )
    return folder


def asgi_through_mesh(
    mesh: Any, raw_path: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """One in-process request through the ASGI middleware to an app that answers 200: the
    status, and the scope the app saw (empty when it never ran)."""
    import meshlib.asgi

    seen: dict[str, Any] = {}
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    scope = {
        "type": "http",
        "method": "GET",
        "path": "(ignored: raw_path wins)",
        "raw_path": raw_path,
        "query_string": query,
        "headers": headers or [],
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
    }
    asyncio.run(meshlib.asgi.MeshMiddleware(app, mesh)(scope, receive, send))
    return sent[0]["status"], seen
