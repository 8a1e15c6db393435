"""Learned egress hosts: what the first request to a newly called service costs, and what a
workload downloads at start, against declared egress hosts and the whole registry.

Method: a config service (embedded, open registry) holds ``--services`` services, each one
registered workload with an endpoint on one real HTTP server, and ``--registry`` more workloads
with endpoints (the rest of a large mesh). Each round starts three client meshes, one after the
other in rotating order, and sends one request to every service, then a second:

- ``whole``: no egress hosts: the whole registry at start;
- ``declared``: ``egress_hosts`` naming every service: only their entries;
- ``learned``: ``learn_egress=True``: nothing at start; the first request to each service
  waits while the watcher fetches that service's entries.

All three share one backend (one address and port), so after the first request of a mesh the
connection is reused: the first request to each further service differs from the second only
by what the mesh does before sending it. Reported: ``Mesh.start()`` (register, first snapshot),
the bytes of that first snapshot (the last-known-good copy), and per request the median and p90
wall time over every service of every round.

    .venv/bin/python benchmarks/learned_egress.py [--services 20] [--registry 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._results import machine, pct, write_section
from meshlib import Mesh
from meshlib.controlplane.server import ConfigServer
from meshlib.last_known_good import LKG_FILE
from tests.servers import Backend, serve

TITLE = "Learned egress hosts (first request to a new service)"
CASES = ("whole", "declared", "learned")


def register(url: str, wid: str, service: str, port: int) -> None:
    body = {"id": wid, "service": service, "endpoints": [{"address": "127.0.0.1", "port": port}]}
    httpx.put(f"{url}/v1/workloads/{wid}", json=body, timeout=30).raise_for_status()


def options(case: str, services: list[str]) -> dict[str, Any]:
    if case == "declared":
        return {"egress_hosts": [f"./{s}" for s in services]}
    if case == "learned":
        return {"learn_egress": True}
    return {}


def one(case: str, url: str, data_dir: Path, services: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    mesh = Mesh("client", control_plane=url, data_dir=data_dir, **options(case, services)).start()
    start_s = time.perf_counter() - started
    first: list[float] = []
    second: list[float] = []
    try:
        size = (data_dir / LKG_FILE).stat().st_size
        with mesh.http_client() as client:
            for service in services:
                for into in (first, second):
                    t = time.perf_counter()
                    response = client.get(f"http://{service}/")
                    into.append(time.perf_counter() - t)
                    if response.status_code != 200:
                        raise RuntimeError(f"{case}: {service} answered {response.status_code}")
    finally:
        mesh.close()
    return {"start": start_s, "bytes": size, "first": first, "second": second}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--registry", type=int, default=2000, help="other workloads with endpoints")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    services = [f"svc{i}" for i in range(args.services)]
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in CASES}
    began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve(Backend("backend")) as port,
        ConfigServer(Path(tmp) / "cp", insecure_open_registry=True) as server,
    ):
        for service in services:
            register(server.url, f"{service}-0", service, port)
        for j in range(args.registry):
            register(server.url, f"other-{j}", f"other{j % 50}", port)
        for r in range(args.rounds):
            order = CASES[r % 3 :] + CASES[: r % 3]
            for case in order:
                results[case].append(one(case, server.url, Path(tmp) / f"{case}-{r}", services))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    rows = []
    for case in CASES:
        runs = results[case]
        first = [x for run in runs for x in run["first"][1:]]  # the very first opens the connection
        second = [x for run in runs for x in run["second"][1:]]
        starts = sorted(run["start"] * 1000 for run in runs)
        first_ms = f"{pct(first, 0.5):.2f} / {pct(first, 0.9):.2f}"
        second_ms = f"{pct(second, 0.5):.2f} / {pct(second, 0.9):.2f}"
        median_start = starts[len(starts) // 2]
        rows.append(f"| {case} | {median_start:.0f} | {runs[0]['bytes']:,} | {first_ms} | {second_ms} |")
    command = (
        f"`.venv/bin/python benchmarks/learned_egress.py --services {args.services} "
        f"--registry {args.registry} --rounds {args.rounds}`"
    )
    header = "| egress hosts | start ms (median) | first snapshot bytes | first request to a service ms |"
    body = "\n".join(
        [
            f"Command: {command}  ",
            f"Machine: {machine()}; the config service (embedded), the backend and the client in one"
            " process  ",
            f"Date: {began}",
            "",
            f"{args.services} services with one workload each and {args.registry} more workloads with"
            " endpoints",
            "in the registry. Per case and round a new client mesh: start (register, first snapshot) and the",
            "size of that snapshot; then, per service, the first request and a second one (ms, median / p90",
            "over every service of every round but each mesh's very first request, which also opens the",
            "connection).",
            "",
            header + " second request ms |",
            "|---|---:|---:|---:|---:|",
            *rows,
        ]
    )
    print(body)
    if not args.no_write:
        write_section(TITLE, body)


if __name__ == "__main__":
    main()
