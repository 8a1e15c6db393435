"""HTTP client data plane cost: meshlib's transport against a plain httpx transport.

Method: one backend (a bare ASGI app under uvicorn) runs in its own process, so the
client process's CPU time is the client's alone. In the same run, rounds alternate
between a plain ``httpx`` client talking to the backend directly and a mesh client
calling ``http://reviews/`` with routing (a header rule, then an 80/20 split over two
subsets of the same backend), LEAST_REQUEST balancing, outlier detection, retries and
metrics all armed. Per round: client CPU µs per request (``time.process_time``) and
latency percentiles. The figures are medians over rounds; the machine is shared, so
compare within a run, never across runs.

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
from _results import machine, measure, pct, write_section

import meshlib

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


def free_port() -> int:
    from meshlib._net import bind

    sock = bind("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def measure_async(client: httpx.AsyncClient, url: str, n: int) -> tuple[float, list[float]]:
    latencies = []
    cpu = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await client.get(url)
        latencies.append(time.perf_counter() - start)
    return (time.process_time() - cpu) / n * 1e6, latencies


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
            with meshlib.Mesh("frontend", config=path) as mesh:
                return compare(mesh, port, requests, rounds)
    finally:
        for backend in backends:
            backend.terminate()
            backend.wait(10)


def compare(mesh: meshlib.Mesh, port: int, requests: int, rounds: int) -> str:
    direct = f"http://127.0.0.1:{port}/"
    results: dict[str, list[tuple[float, list[float]]]] = {
        k: [] for k in ("sync plain", "sync mesh", "async plain", "async mesh")
    }
    with httpx.Client() as plain, mesh.http_client() as meshed:
        for client, url in ((plain, direct), (meshed, "http://reviews/")):
            for _ in range(200):
                client.get(url)  # warm up: connections, caches
        for _ in range(rounds):
            results["sync plain"].append(measure(lambda: plain.get(direct), requests))
            results["sync mesh"].append(measure(lambda: meshed.get("http://reviews/"), requests))

    async def async_rounds() -> None:
        async with httpx.AsyncClient() as plain_a, mesh.async_http_client() as meshed_a:
            for client, url in ((plain_a, direct), (meshed_a, "http://reviews/")):
                for _ in range(200):
                    await client.get(url)
            for _ in range(rounds):
                results["async plain"].append(await measure_async(plain_a, direct, requests))
                results["async mesh"].append(await measure_async(meshed_a, "http://reviews/", requests))

    asyncio.run(async_rounds())
    rows = []
    summary = {}
    for name, samples in results.items():
        cpu = statistics.median(s[0] for s in samples)
        p50 = statistics.median(pct(s[1], 0.5) for s in samples)
        p99 = statistics.median(pct(s[1], 0.99) for s in samples)
        summary[name] = cpu
        rows.append(f"| {name} | {cpu:.0f} | {p50:.3f} | {p99:.3f} |")

    # Rounds alternate plain/mesh, so each mesh round has a plain round measured just before it
    # under the same machine load: the median of those paired differences is the figure
    # (a difference of medians would mix rounds taken under different load).
    def paired(mode: str) -> float:
        plain, meshed = results[f"{mode} plain"], results[f"{mode} mesh"]
        return statistics.median(m[0] - p[0] for p, m in zip(plain, meshed, strict=True))

    added_sync, added_async = paired("sync"), paired("async")
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
            "Added by the mesh (median over rounds of mesh minus the plain round just before it): "
            f"**{added_sync:.0f} µs CPU per request sync** "
            f"(ratio {summary['sync mesh'] / summary['sync plain']:.2f}), "
            f"**{added_async:.0f} µs async** (ratio {summary['async mesh'] / summary['async plain']:.2f}). "
            "Target: under 50 µs.",
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
