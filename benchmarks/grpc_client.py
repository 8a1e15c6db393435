"""gRPC client cost: a meshlib mesh channel against a plain grpc channel, per unary call.

Method: a raw-bytes gRPC server runs in its own process on 127.0.0.1; in one run, rounds
alternate between a plain ``grpc.insecure_channel`` to it and ``meshlib_grpc.channel`` to
``reviews`` (routing, LEAST_REQUEST, outlier detection, retries and metrics armed). Client
CPU µs per call (``time.process_time``) and latency percentiles; medians over rounds.

    .venv/bin/python benchmarks/grpc_client.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import meshlib_grpc
from _results import machine, measure, pct, write_section

from meshlib import Mesh
from meshlib._net import bind

SERVER = """\
import sys, time, concurrent.futures, grpc
def unary(request, context):
    return b"ok"
server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "bench.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""

POLICY = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 50051, name: grpc, protocol: GRPC}}]
  endpoints: [{{address: 127.0.0.1, ports: {{grpc: {port}}}, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /bench.Echo/}}}}]
    route: [{{destination: {{host: reviews}}}}]
    retries: {{attempts: 2, perTryTimeout: 2s, retryOn: unavailable}}
    timeout: 5s
"""


def run(calls: int, rounds: int) -> str:
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy = Path(tmp) / "policy.yaml"
            policy.write_text(POLICY.format(port=port))
            with (
                Mesh("frontend", config=policy) as mesh,
                grpc.insecure_channel(f"127.0.0.1:{port}") as plain,
                meshlib_grpc.channel(mesh, "reviews") as meshed,
            ):
                grpc.channel_ready_future(plain).result(timeout=20)
                plain_call = plain.unary_unary("/bench.Echo/Unary")
                mesh_call = meshed.unary_unary("/bench.Echo/Unary")
                for _ in range(300):
                    plain_call(b"x", timeout=5)
                    mesh_call(b"x", timeout=5)
                samples: dict[str, list[tuple[float, list[float]]]] = {
                    "plain channel": [],
                    "mesh channel": [],
                }
                for _ in range(rounds):
                    samples["plain channel"].append(measure(lambda: plain_call(b"x", timeout=5), calls))
                    samples["mesh channel"].append(measure(lambda: mesh_call(b"x", timeout=5), calls))
    finally:
        server.terminate()
        server.wait(10)
    rows, cpu = [], {}
    for name, got in samples.items():
        cpu[name] = statistics.median(s[0] for s in got)
        p50 = statistics.median(pct(s[1], 0.5) for s in got)
        p99 = statistics.median(pct(s[1], 0.99) for s in got)
        rows.append(f"| {name} | {cpu[name]:.0f} | {p50:.3f} | {p99:.3f} |")
    added = cpu["mesh channel"] - cpu["plain channel"]
    return "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/grpc_client.py --calls {calls} --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "| channel | CPU µs/call (median of rounds) | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *rows,
            "",
            f"Added by the mesh: **{added:.0f} µs CPU per unary call** "
            f"(ratio {cpu['mesh channel'] / cpu['plain channel']:.2f}). Target: under 60 µs.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = run(args.calls, args.rounds)
    print(body)
    write_section("gRPC client (mesh channel vs plain channel, unary)", body)


if __name__ == "__main__":
    main()
