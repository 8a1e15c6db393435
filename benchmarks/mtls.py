"""mTLS costs: CA issuance rate, handshake cost, and per-request cost with keep-alive.

Method, all on 127.0.0.1, figures as medians over rounds in one run:
- issuance: a config service in its own process signs CSRs posted with a bootstrap token,
  one at a time and 8 at a time (certificates/s); plus the signing alone, in-process;
- handshake: a `serve_asgi` workload with a mesh identity in its own process; a client
  opens a fresh connection per request (keep-alive off), mTLS against plaintext (PERMISSIVE
  serves both on the one port): wall ms and client CPU ms per new connection;
- keep-alive: `mesh.http_client()` (mTLS chosen automatically) against a plain httpx
  client to the same port, CPU µs per request.

    .venv/bin/python benchmarks/mtls.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, write_section

from meshlib import Mesh
from meshlib.ca.svid import issue_svid, make_ca
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer

WORKLOAD = textwrap.dedent("""\
    import os, sys
    import meshlib
    mesh = meshlib.Mesh("reviews", control_plane=sys.argv[1], token=os.environ["TOKEN"], data_dir=sys.argv[2])
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    meshlib.serve_asgi(app, mesh=mesh, port=0, drain_delay=0.1)
""")


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def issuance(server: ConfigServer, token: str, rounds: int) -> dict[str, float]:
    csrs = [csr_pem() for _ in range(50)]
    headers = {"authorization": f"Bearer {token}"}
    sequential, parallel = [], []
    with httpx.Client(base_url=server.url, headers=headers) as client:
        for _ in range(rounds):
            start = time.perf_counter()
            for csr in csrs:
                client.post("/v1/certificates", json={"csr": csr}).raise_for_status()
            sequential.append(len(csrs) / (time.perf_counter() - start))
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda c: client.post("/v1/certificates", json={"csr": c}).raise_for_status(), csrs
                    )
                )
            parallel.append(len(csrs) / (time.perf_counter() - start))
    ca = make_ca("cluster.local")
    csr = x509.load_pem_x509_csr(csrs[0].encode())
    start = time.perf_counter()
    for _ in range(200):
        issue_svid(ca, csr, "spiffe://cluster.local/ns/default/sa/bench", dt.timedelta(hours=24))
    signing = 200 / (time.perf_counter() - start)
    return {
        "http one at a time": statistics.median(sequential),
        "http 8 at a time": statistics.median(parallel),
        "signing alone (in-process)": signing,
    }


def per_connection(url: str, context: ssl.SSLContext | None, n: int) -> tuple[float, float]:
    limits = httpx.Limits(max_keepalive_connections=0)
    wall, cpu = time.perf_counter(), time.process_time()
    with httpx.Client(verify=context or False, limits=limits) as client:
        for _ in range(n):
            client.get(url).raise_for_status()
    return (time.perf_counter() - wall) / n * 1000, (time.process_time() - cpu) / n * 1000


def run(rounds: int) -> str:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with ConfigServer(tmp / "cp") as server, ControlPlaneClient(server.url, server.admin_token) as admin:
            rates = issuance(server, admin.create_token("bench")["token"], rounds)
            script = tmp / "reviews.py"
            script.write_text(WORKLOAD)
            env = {**os.environ, "TOKEN": admin.create_token("reviews")["token"]}
            proc = subprocess.Popen([sys.executable, str(script), server.url, str(tmp / "reviews")], env=env)
            try:
                token = admin.create_token("frontend")["token"]
                with Mesh(
                    "frontend", control_plane=server.url, token=token, data_dir=tmp / "frontend"
                ) as mesh:
                    host = "reviews.default.svc.cluster.local"
                    deadline = time.monotonic() + 20
                    while not mesh.snapshot.endpoints(host):
                        if time.monotonic() > deadline:
                            raise RuntimeError("the workload never registered")
                        time.sleep(0.05)
                    (endpoint,) = mesh.snapshot.endpoints(host)
                    assert mesh.workload_identity is not None
                    context = mesh.workload_identity.client_context()
                    plain_url = f"http://{endpoint.address}:{endpoint.port}/"
                    tls_url = f"https://{endpoint.address}:{endpoint.port}/"
                    handshake = {"plaintext": [], "mTLS": []}  # type: dict[str, list[tuple[float, float]]]
                    keepalive = {"plain httpx": [], "mesh (mTLS)": []}  # type: dict[str, list[float]]
                    with httpx.Client() as plain, mesh.http_client() as meshed:
                        for client, url in ((plain, plain_url), (meshed, "http://reviews/")):
                            for _ in range(200):
                                client.get(url)
                        for _ in range(rounds):
                            handshake["plaintext"].append(per_connection(plain_url, None, 100))
                            handshake["mTLS"].append(per_connection(tls_url, context, 100))
                            for name, client, url in (
                                ("plain httpx", plain, plain_url),
                                ("mesh (mTLS)", meshed, "http://reviews/"),
                            ):
                                cpu = time.process_time()
                                for _ in range(1000):
                                    client.get(url)
                                keepalive[name].append((time.process_time() - cpu) / 1000 * 1e6)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
    hs = {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
        for k, v in handshake.items()
    }
    ka = {k: statistics.median(v) for k, v in keepalive.items()}
    return "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/mtls.py --rounds {rounds}`  ",
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            "| CA issuance | certificates/s |",
            "|---|---|",
            *(f"| {k} | {v:.0f} |" for k, v in rates.items()),
            "",
            "| new connection per request | wall ms | client CPU ms |",
            "|---|---|---|",
            *(f"| {k} | {w:.2f} | {c:.2f} |" for k, (w, c) in hs.items()),
            "",
            f"A handshake adds {hs['mTLS'][0] - hs['plaintext'][0]:.2f} ms of wall time and "
            f"{hs['mTLS'][1] - hs['plaintext'][1]:.2f} ms of client CPU per new connection (ECDSA P-256).",
            "",
            "| keep-alive, per request | client CPU µs |",
            "|---|---|",
            *(f"| {k} | {v:.0f} |" for k, v in ka.items()),
            "",
            f"The mesh client with mTLS costs {ka['mesh (mTLS)'] - ka['plain httpx']:.0f} µs more per "
            "request than plain httpx over plaintext (routing, balancing, metrics and TLS records).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    body = run(args.rounds)
    print(body)
    write_section("mTLS: CA issuance, handshakes, keep-alive cost", body)


if __name__ == "__main__":
    main()
