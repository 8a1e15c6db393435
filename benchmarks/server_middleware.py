"""Server-side middleware cost: meshlib's ASGI and WSGI middleware against the bare app.

Method: the application is called directly, in-process, with a realistic request (eight
headers, a query string, a deadline header), so the figure is the middleware's own CPU
per request — no sockets, no server. Rounds alternate bare and wrapped; the figures are
medians over rounds with metrics on (tracing is a later issue and not armed yet).

    .venv/bin/python benchmarks/server_middleware.py [--requests 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section

import meshlib

HEADERS = [
    (b"host", b"reviews"),
    (b"user-agent", b"python-httpx/0.28"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"x-request-id", b"5f1c0b0e-2a39-4c9e-9d7e-3a1c1b2a9f00"),
    (b"end-user", b"jason"),
    (b"x-envoy-expected-rq-timeout-ms", b"1500"),
]
SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/reviews/42",
    "raw_path": b"/api/reviews/42",
    "query_string": b"page=2",
    "root_path": "",
    "headers": HEADERS,
    "server": ("127.0.0.1", 8080),
    "client": ("127.0.0.1", 50000),
}
ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/api/reviews/42",
    "QUERY_STRING": "page=2",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8080",
    "wsgi.url_scheme": "http",
    "SERVER_PROTOCOL": "HTTP/1.1",
    **{"HTTP_" + k.decode().upper().replace("-", "_"): v.decode() for k, v in HEADERS},
}
BODY = b'{"id": 42, "stars": 5}'


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": BODY})


def wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [BODY]


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    return None


async def asgi_round(app: Any, n: int) -> float:
    cpu = time.process_time()
    for _ in range(n):
        await app(dict(SCOPE), receive, send)
    return (time.process_time() - cpu) / n * 1e6


def wsgi_round(app: Any, n: int) -> float:
    cpu = time.process_time()
    for _ in range(n):
        for _chunk in app(dict(ENVIRON), start_response):
            pass
    return (time.process_time() - cpu) / n * 1e6


def run(requests: int, rounds: int) -> str:
    with meshlib.Mesh("reviews") as mesh:  # static mode, no policy: the stack still runs in full
        wrapped_asgi = meshlib.asgi.MeshMiddleware(asgi_app, mesh=mesh)
        wrapped_wsgi = meshlib.wsgi.MeshMiddleware(wsgi_app, mesh=mesh)
        samples: dict[str, list[float]] = {
            k: [] for k in ("asgi bare", "asgi mesh", "wsgi bare", "wsgi mesh")
        }

        async def asgi_rounds() -> None:
            await asgi_round(wrapped_asgi, 2000)
            for _ in range(rounds):
                samples["asgi bare"].append(await asgi_round(asgi_app, requests))
                samples["asgi mesh"].append(await asgi_round(wrapped_asgi, requests))

        asyncio.run(asgi_rounds())
        wsgi_round(wrapped_wsgi, 2000)
        for _ in range(rounds):
            samples["wsgi bare"].append(wsgi_round(wsgi_app, requests))
            samples["wsgi mesh"].append(wsgi_round(wrapped_wsgi, requests))
        recorded = mesh.metrics.requests_total(direction="inbound")
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [f"| {k} | {v:.1f} |" for k, v in med.items()]
    return "\n".join(
        [
            "Command: `.venv/bin/python benchmarks/server_middleware.py "
            f"--requests {requests} --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"inbound requests recorded: {recorded}",
            "",
            "| app | CPU µs/request (median of rounds) |",
            "|---|---|",
            *rows,
            "",
            f"Added by the middleware: **ASGI {med['asgi mesh'] - med['asgi bare']:.1f} µs**, "
            f"**WSGI {med['wsgi mesh'] - med['wsgi bare']:.1f} µs** per request "
            "(deadline header parsed, health check, peer lookup, metrics). Target: under 40 µs.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    body = run(args.requests, args.rounds)
    print(body)
    write_section("Server middleware (ASGI / WSGI) against the bare app", body)


if __name__ == "__main__":
    main()
