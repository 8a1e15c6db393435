"""HTTP client data plane cost: meshlib's transport against a plain httpx transport.

Method: one backend (a bare ASGI app under uvicorn) runs in its own process, so the
client process's CPU time is the client's alone. In the same run, rounds alternate
between a plain ``httpx`` client talking to the backend directly and a mesh client
calling ``http://reviews/`` with routing (a header rule, then an 80/20 split over two
subsets of the same backend), LEAST_REQUEST balancing, outlier detection, retries,
Istio-labelled metrics and tracing (an OpenTelemetry SDK, Istio's 1% sampling) all armed,
and the same mesh with its telemetry off (no metrics, no trace context), so that the
telemetry's own cost is the paired difference. Per round each client sends the
same number of requests, the three taking turns by blocks of 50 (the order rotating), so that
all see the same machine; per round: client CPU µs per request (``time.process_time``) and
latency percentiles. The figures are medians over rounds;
the machine is shared, so compare within a run, never across runs.

    .venv/bin/python benchmarks/http_client.py [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import interleaved, machine, pct, turns, write_section

import meshlib
from meshlib._net import free_port  # outside the ephemeral range (see there)

BACKEND = """\
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False)
"""


def policy(port: int, second: int) -> str:
    return textwrap.dedent(f"""\
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {{name: reviews}}
        spec:
          hosts: [reviews]
          location: MESH_INTERNAL
          resolution: STATIC
          ports: [{{number: 80, name: http, protocol: HTTP}}]
          endpoints:
          - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: v1}}}}
          - {{address: 127.0.0.1, ports: {{http: {second}}}, labels: {{version: v2}}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {{name: reviews}}
        spec:
          host: reviews
          trafficPolicy:
            loadBalancer: {{simple: LEAST_REQUEST}}
            outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
          subsets:
          - {{name: v1, labels: {{version: v1}}}}
          - {{name: v2, labels: {{version: v2}}}}
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {{name: reviews}}
        spec:
          hosts: [reviews]
          http:
          - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
            route:
            - destination: {{host: reviews, subset: v2}}
          - route:
            - destination: {{host: reviews, subset: v1}}
              weight: 80
            - destination: {{host: reviews, subset: v2}}
              weight: 20
            retries: {{attempts: 2, perTryTimeout: 2s, retryOn: 5xx}}
            timeout: 5s
        """)


MESH_URL = "http://reviews/"


BLOCK = 50
"""Requests per block: the clients take turns by blocks (see _results.interleaved)."""


async def interleaved_async(
    clients: dict[str, tuple[httpx.AsyncClient, str]], n: int
) -> dict[str, tuple[float, list[float]]]:
    """_results.interleaved for async clients: each sends n GETs, in turns of BLOCK."""
    cpu = dict.fromkeys(clients, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in clients}
    for name, count in turns(list(clients), n, BLOCK):
        (client, url), times = clients[name], latencies[name]
        start_cpu = time.process_time()
        for _ in range(count):
            start = time.perf_counter()
            await client.get(url)
            times.append(time.perf_counter() - start)
        cpu[name] += time.process_time() - start_cpu
    return {name: (cpu[name] / n * 1e6, latencies[name]) for name in clients}


def run(requests: int, rounds: int) -> str:
    # Two backend processes, one per subset (a STATIC endpoint must be an IP: 127.0.0.1 twice).
    port, second = free_port(), free_port()
    backends = [subprocess.Popen([sys.executable, "-c", BACKEND, str(p)]) for p in (port, second)]
    try:
        deadline = time.monotonic() + 15
        for each in (port, second):
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{each}/")
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "policy.yaml"
            path.write_text(policy(port, second))
            from opentelemetry.sdk.trace import TracerProvider

            with (
                meshlib.Mesh("frontend", config=path, tracer_provider=TracerProvider()) as mesh,
                meshlib.Mesh("frontend", config=path) as quiet,
            ):
                assert quiet.telemetry is not None
                quiet.telemetry.tracing = None
                quiet.telemetry.outbound_done = lambda *_: None  # type: ignore[method-assign]
                return compare(mesh, quiet, port, requests, rounds)
    finally:
        for backend in backends:
            backend.terminate()
            backend.wait(10)


def compare(mesh: meshlib.Mesh, quiet: meshlib.Mesh, port: int, requests: int, rounds: int) -> str:
    direct = f"http://127.0.0.1:{port}/"
    kinds = ("plain", "mesh, no telemetry", "mesh")
    results: dict[str, list[tuple[float, list[float]]]] = {
        f"{mode} {kind}": [] for mode in ("sync", "async") for kind in kinds
    }
    with httpx.Client() as plain, quiet.http_client() as quieted, mesh.http_client() as meshed:
        clients = {
            "plain": (plain, direct),
            "mesh, no telemetry": (quieted, MESH_URL),
            "mesh": (meshed, MESH_URL),
        }
        for client, url in clients.values():
            for _ in range(200):
                client.get(url)  # warm up: connections, caches
        for _ in range(rounds):
            calls = {kind: (lambda c=client, u=url: c.get(u)) for kind, (client, url) in clients.items()}
            for kind, figures in interleaved(calls, requests, BLOCK).items():
                results[f"sync {kind}"].append(figures)

    async def async_rounds() -> None:
        async with (
            httpx.AsyncClient() as plain_a,
            quiet.async_http_client() as quieted_a,
            mesh.async_http_client() as meshed_a,
        ):
            clients_a = {
                "plain": (plain_a, direct),
                "mesh, no telemetry": (quieted_a, MESH_URL),
                "mesh": (meshed_a, MESH_URL),
            }
            for client, url in clients_a.values():
                for _ in range(200):
                    await client.get(url)
            for _ in range(rounds):
                for kind, figures in (await interleaved_async(clients_a, requests)).items():
                    results[f"async {kind}"].append(figures)

    asyncio.run(async_rounds())
    rows = []
    summary = {}
    for name, samples in results.items():
        cpu = statistics.median(s[0] for s in samples)
        p50 = statistics.median(pct(s[1], 0.5) for s in samples)
        p99 = statistics.median(pct(s[1], 0.99) for s in samples)
        summary[name] = cpu
        rows.append(f"| {name} | {cpu:.0f} | {p50:.3f} | {p99:.3f} |")

    # Within a round the clients took turns by blocks, so each round's mesh figure and its plain
    # one were measured under the same machine load: the median of those paired differences is
    # the figure (a difference of medians would mix rounds taken under different load).
    def paired(mode: str, base: str = "plain", kind: str = "mesh") -> float:
        plain, meshed = results[f"{mode} {base}"], results[f"{mode} {kind}"]
        return statistics.median(m[0] - p[0] for p, m in zip(plain, meshed, strict=True))

    added_sync, added_async = paired("sync"), paired("async")
    telemetry_sync = paired("sync", "mesh, no telemetry")
    telemetry_async = paired("async", "mesh, no telemetry")
    flags = mesh.metrics.requests_total()
    return "\n".join(
        [
            "Command: `.venv/bin/python benchmarks/http_client.py "
            f"--requests {requests} --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; mesh requests recorded: {flags}",
            "",
            "| client | CPU µs/request (median of rounds) | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *rows,
            "",
            "Added by the mesh (median over rounds of mesh minus plain in the same round): "
            f"**{added_sync:.0f} µs CPU per request sync** "
            f"(ratio {summary['sync mesh'] / summary['sync plain']:.2f}), "
            f"**{added_async:.0f} µs async** (ratio {summary['async mesh'] / summary['async plain']:.2f}). "
            "Target: under 50 µs.",
            "",
            "Of that, telemetry (Istio-labelled metrics, trace context, 1% of requests with SDK "
            "spans; median over rounds of mesh minus the telemetry-off mesh in the same round): "
            f"**{telemetry_sync:.1f} µs sync**, **{telemetry_async:.1f} µs async** (target: under 15).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round and client")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    body = run(args.requests, args.rounds)
    print(body)
    write_section("HTTP client data plane (meshlib transport vs plain httpx)", body)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    platform.python_version()
    main()
