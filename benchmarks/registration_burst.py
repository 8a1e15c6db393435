"""Registration burst: many workloads registering at once, and what the rest of the API sees.

Method: ``meshctl serve`` (open registry) runs in its own process, on SQLite or on an etcd
this benchmark starts; a few load processes each send their share of ``PUT
/v1/workloads/<id>`` (one endpoint each) with 32 in flight, released together; meanwhile
this process asks ``GET /v1/healthz`` every 10 ms and records how long each answer takes (an
event loop held by store writes answers late). The service's CPU comes from psutil.

Each round measures the service as it is (registrations arriving in one turn of the event
loop are one store write, ``meshlib.controlplane.app.RegistrationBatches``) and, as the
baseline, the same service writing each registration on its own (batches of one).

    .venv/bin/python benchmarks/registration_burst.py [--registrations 4000] [--processes 4]
        [--rounds 2] [--store sqlite,etcd]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._bench import Children
from benchmarks._results import machine, pct, write_section
from tests.etcd import running_etcd
from tests.servers import free_port

TITLE = "Registration burst (config service)"

SERVICE = """\
import sys
import meshlib.controlplane.app as app
app.MAX_BATCHED_REGISTRATIONS = int(sys.argv[1])
from meshlib.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

LOADER = """\
import asyncio, sys
import httpx
url, prefix, count, in_flight = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

async def main() -> None:
    limits = httpx.Limits(max_connections=in_flight)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        gate = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with gate:
                body = {"id": f"{prefix}-{i}", "service": f"svc{i % 50}",
                        "endpoints": [{"address": "127.0.0.1", "port": 10000 + i}]}
                answer = await http.put(f"/v1/workloads/{prefix}-{i}", json=body)
                answer.raise_for_status()

        sys.stdin.readline()  # released together with the other loaders
        await asyncio.gather(*(one(i) for i in range(count)))

asyncio.run(main())
"""


@contextlib.contextmanager
def service(batch: int, store_url: str | None) -> Iterator[tuple[str, psutil.Process]]:
    data = tempfile.mkdtemp(prefix="meshlib-burst-")
    port = free_port()
    argv = ["serve", "--data-dir", data, "--port", str(port), "--insecure-open-registry"]
    if store_url is not None:
        argv += ["--store", store_url]
    env = dict(os.environ, MESH_CONFIG="", MESH_CONTROL_PLANE="")
    with Children() as children:
        proc = children.start(
            [sys.executable, "-c", SERVICE, str(batch), *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/v1/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the config service did not start") from None
                time.sleep(0.05)
        yield url, psutil.Process(proc.pid)


def burst(batch: int, store_url: str | None, registrations: int, processes: int) -> dict[str, float]:
    each = registrations // processes
    with service(batch, store_url) as (url, proc), Children() as children:
        loaders = [
            children.start(
                [sys.executable, "-c", LOADER, url, f"p{k}", str(each), "32"], stdin=subprocess.PIPE
            )
            for k in range(processes)
        ]
        time.sleep(1.5)  # the loaders are up and connected
        before = proc.cpu_times()
        probes: list[float] = []
        started = time.perf_counter()
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write(b"go\n")
            loader.stdin.flush()
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, timeout=30) as http:
            while any(loader.poll() is None for loader in loaders):
                if time.monotonic() > deadline:
                    raise RuntimeError("the burst did not end within 120 s")
                asked = time.perf_counter()
                http.get("/v1/healthz").raise_for_status()
                probes.append(time.perf_counter() - asked)
                time.sleep(0.01)
        wall = time.perf_counter() - started
        after = proc.cpu_times()
        if any(loader.returncode != 0 for loader in loaders):
            raise RuntimeError("a load process failed")
    cpu = (after.user + after.system) - (before.user + before.system)
    return {
        "wall": wall,
        "cpu_ms": cpu / (each * processes) * 1e3,
        "p50": pct(probes, 0.5),
        "p99": pct(probes, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registrations", type=int, default=4000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--store", default="sqlite,etcd")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    opts = parser.parse_args()
    stores = [s for s in opts.store.split(",") if s in ("sqlite", "etcd")]
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="meshlib-burst-etcd-") as tmp, contextlib.ExitStack() as stack:
        etcd = stack.enter_context(running_etcd(Path(tmp) / "etcd")) if "etcd" in stores else None
        for _ in range(opts.rounds):
            for store in stores:
                url = etcd if store == "etcd" else None
                for label, batch in (("one write per registration", 1), ("batched (as shipped)", 40)):
                    got = burst(batch, url, opts.registrations, opts.processes)
                    rows.setdefault((store, label), []).append(got)
                    print(store, label, {k: round(v, 2) for k, v in got.items()}, flush=True)
    lines = [
        f"Command: `.venv/bin/python benchmarks/registration_burst.py --registrations {opts.registrations} "
        f"--processes {opts.processes} --rounds {opts.rounds} --store {','.join(stores)}`  ",
        f"Machine: {machine()}; the service, etcd and the load processes share the cores  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; medians over {opts.rounds} rounds",
        "",
        f"{opts.registrations} registrations from {opts.processes} processes (32 in flight each), while "
        "`GET /v1/healthz` is asked every 10 ms.",
        "",
        "| store | service | burst s | service CPU ms per registration "
        "| /v1/healthz p50 ms | /v1/healthz p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (store, label), got in rows.items():

        def med(key: str, got: list[dict[str, float]] = got) -> float:
            return statistics.median(g[key] for g in got)

        lines.append(
            f"| {store} | {label} | {med('wall'):.2f} | {med('cpu_ms'):.2f} "
            f"| {med('p50'):.1f} | {med('p99'):.0f} |"
        )
    body = "\n".join(lines)
    print("\n" + body)
    if not opts.no_write:
        write_section(TITLE, body)
        print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
