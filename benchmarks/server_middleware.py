"""Server-side middleware cost: meshlib's ASGI and WSGI middleware against the bare app.

Method: the application is called directly, in-process, with a realistic request (eight
headers, a query string, a deadline header), so the figure is the middleware's own CPU
per request — no sockets, no server. Rounds alternate bare and wrapped; the figures are
medians over rounds, with metrics on; traced (an SDK, 1% sampling) and untraced meshes alternate.

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
    from opentelemetry.sdk.trace import TracerProvider

    # static mode, no policy: the stack still runs in full. "traced": an OpenTelemetry SDK
    # installed and Istio's 1% sampling (the default); "untraced": the same mesh with its
    # tracing off, so the difference is what trace context and 1% of spans cost; "no
    # telemetry": neither metrics nor tracing, so the difference is what telemetry costs.
    with (
        meshlib.Mesh("reviews", tracer_provider=TracerProvider()) as mesh,
        meshlib.Mesh("reviews") as untraced,
        meshlib.Mesh("reviews") as quiet,
    ):
        untraced.telemetry.tracing = None
        quiet.telemetry.tracing = None
        quiet.telemetry.inbound_done = lambda *_: None  # type: ignore[method-assign]
        apps = {
            "asgi bare": asgi_app,
            "asgi no telemetry": meshlib.asgi.MeshMiddleware(asgi_app, mesh=quiet),
            "asgi untraced": meshlib.asgi.MeshMiddleware(asgi_app, mesh=untraced),
            "asgi mesh": meshlib.asgi.MeshMiddleware(asgi_app, mesh=mesh),
        }
        wsgi_apps = {
            "wsgi bare": wsgi_app,
            "wsgi no telemetry": meshlib.wsgi.MeshMiddleware(wsgi_app, mesh=quiet),
            "wsgi untraced": meshlib.wsgi.MeshMiddleware(wsgi_app, mesh=untraced),
            "wsgi mesh": meshlib.wsgi.MeshMiddleware(wsgi_app, mesh=mesh),
        }
        samples: dict[str, list[float]] = {k: [] for k in (*apps, *wsgi_apps)}

        async def asgi_rounds() -> None:
            for app in apps.values():
                await asgi_round(app, 2000)
            for _ in range(rounds):
                for name, app in apps.items():
                    samples[name].append(await asgi_round(app, requests))

        asyncio.run(asgi_rounds())
        for app in wsgi_apps.values():
            wsgi_round(app, 2000)
        for _ in range(rounds):
            for name, app in wsgi_apps.items():
                samples[name].append(wsgi_round(app, requests))
        recorded = mesh.metrics.requests_total(direction="inbound")
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [f"| {k} | {v:.1f} |" for k, v in med.items()]
    return "\n".join(
        [
            "Command: `.venv/bin/python benchmarks/server_middleware.py "
            f"--requests {requests} --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"inbound requests recorded (traced mesh): {recorded}",
            "",
            "| app | CPU µs/request (median of rounds) |",
            "|---|---|",
            *rows,
            "",
            f"Added by the middleware: **ASGI {med['asgi mesh'] - med['asgi bare']:.1f} µs**, "
            f"**WSGI {med['wsgi mesh'] - med['wsgi bare']:.1f} µs** per request "
            "(deadline header parsed, health check, peer lookup, Istio-labelled metrics, trace "
            "context, 1% of requests with an SDK span). Of that, telemetry (metrics and tracing): "
            f"**ASGI {med['asgi mesh'] - med['asgi no telemetry']:.1f} µs**, "
            f"**WSGI {med['wsgi mesh'] - med['wsgi no telemetry']:.1f} µs** (target: under 15); "
            f"tracing alone: ASGI {med['asgi mesh'] - med['asgi untraced']:.1f} µs, "
            f"WSGI {med['wsgi mesh'] - med['wsgi untraced']:.1f} µs.",
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
