"""Registry churn: endpoints joining and leaving at a steady rate while workloads watch.

Method: the config service runs in its own process (as in watch_fanout.py: SQLite, or etcd
started per case). One asyncio driver process holds ``--watchers`` long-poll watches (one
minimal HTTP/1.1 keep-alive connection each; each watch sends the version it has and ACKs
it, parses the snapshot's JSON and keeps its set of endpoints); a second process churns the
registry at ``--rate`` operations per second for ``--seconds`` (one at a time, each waiting
for its answer): a new workload with one endpoint joins, or the oldest leaves, keeping about
``--live`` registered. When the churn stops, the service's own snapshot is the truth; the
figure is how long every watcher takes to hold exactly its endpoints at its version, plus
how many versions the churn made, the service's CPU during the churn and every error.
``--store etcd-replicas``: two replicas on one etcd, the churn sent to A and every watcher on
B, so that B serves what it learns from A (its CPU is the service's; A's is given too).
``--registered N``: N quiet workloads (one endpoint each, in 50 other services) registered
before the churn, so that what a replica does per change can be told from what it does per
registry entry. Bounded in count and time; 127.0.0.1 only; the processes started here are
stopped by pid.

    .venv/bin/python benchmarks/registry_churn.py [--watchers 200] [--rate 100] [--seconds 10]
        [--store sqlite,etcd,etcd-replicas] [--snapshots full,delta,scoped] [--registered 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil  # type: ignore[import-untyped]
from _results import machine, write_section
from watch_fanout import Deadline, RawTransport, ServiceProcess, cpu_seconds

from meshlib.controlplane.etcd_process import running_etcd
from meshlib.snapshot_delta import HeldSnapshot

REVIEWS = "default/reviews.default.svc.cluster.local"  # the churned service
RATINGS = "default/ratings.default.svc.cluster.local"  # a quiet one
MODES = ("full", "delta", "scoped")
STORES = ("sqlite", "etcd", "etcd-replicas")


@dataclass
class Watch:
    delta: bool = False
    hosts: list[str] | None = None  # egress hosts sent with each watch
    version: int = -1
    endpoints: frozenset[int] = frozenset()
    answers: int = 0  # watch answers with a snapshot or delta, during the churn and after
    received: int = 0  # their bytes
    errors: list[str] = field(default_factory=list)

    def holds(self, truth: dict[str, Any], wanted: frozenset[int]) -> bool:
        if self.hosts is not None and REVIEWS not in self.hosts:
            return not self.endpoints  # scoped to a quiet service: none of the churn
        return self.version >= truth["version"] and self.endpoints == wanted


def watches(mode: str, n: int) -> list[Watch]:
    """``full``: every watcher gets the whole snapshot; ``delta``: what changed; ``scoped``:
    deltas, half the watchers calling the churned service and half a quiet one."""
    if mode == "full":
        return [Watch() for _ in range(n)]
    if mode == "delta":
        return [Watch(delta=True) for _ in range(n)]
    return [Watch(delta=True, hosts=[REVIEWS if i % 2 == 0 else RATINGS]) for i in range(n)]


@dataclass
class Outcome:
    store: str
    mode: str = "full"
    answers: float = 0.0  # per watcher
    received: float = 0.0  # bytes per watcher
    quiet_answers: int | None = None  # the most any watcher of the quiet service got
    ops: int = 0
    ops_seconds: float = 0.0
    versions: int = 0
    converged: float | None = None
    service_cpu: float = 0.0
    churned_cpu: float | None = None  # etcd-replicas: replica A's, where the churn goes
    errors: list[str] = field(default_factory=list)


def endpoints_of(snapshot: dict[str, Any]) -> frozenset[int]:
    """The churned service's endpoints (not the quiet ``--registered`` ones)."""
    churned = (w for w in snapshot["workloads"] if w["service"] == "reviews")
    return frozenset(e["port"] for w in churned for e in w["endpoints"])


async def register_quiet(url: str, count: int) -> None:
    """``count`` workloads that never change, 32 registrations in flight."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with gate:
                body = {
                    "id": f"quiet-{i}",
                    "service": f"idle{i % 50}",
                    "endpoints": [{"address": "127.0.0.2", "port": 1000 + i}],
                }
                (await client.put(f"/v1/workloads/quiet-{i}", json=body)).raise_for_status()

        await asyncio.gather(*(one(i) for i in range(count)))


async def watch(port: int, index: int, state: Watch, stop: asyncio.Event) -> None:
    """One watcher on its own keep-alive connection (watch_fanout's minimal HTTP/1.1 client:
    httpx would cost the driver more than the service spends)."""
    transport = RawTransport(port, 30.0)
    workload = f"watcher-{index}"
    try:
        status, _ = await transport.request(
            "PUT", f"/v1/workloads/{workload}", json.dumps({"id": workload, "service": "frontend"}).encode()
        )
        if status != 200:
            state.errors.append(f"register: {status}")
            return
        ack: int | None = None
        held: HeldSnapshot | None = None
        while not stop.is_set():
            body: dict[str, Any] = {"workload": workload, "version": state.version, "wait": 2}
            if ack is not None:
                body["ack"] = ack
            if state.delta and held is not None:
                body["delta"], body["epoch"] = True, transport.epoch
            if state.hosts is not None:
                body["hosts"] = state.hosts
            try:
                status, content = await transport.request("POST", "/v1/watch", json.dumps(body).encode())
            except (TimeoutError, OSError, ValueError) as exc:
                state.errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.1)
                continue
            if status == 204:
                continue
            if status != 200:
                state.errors.append(f"watch: {status} {content[:100]!r}")
                await asyncio.sleep(0.1)
                continue
            state.answers += 1
            state.received += len(content)
            snapshot = json.loads(content)
            if "base" in snapshot and held is not None:
                snapshot = held.apply(snapshot)
            else:
                held = HeldSnapshot(snapshot)
            state.version, state.endpoints = snapshot["version"], endpoints_of(snapshot)
            ack = state.version
    finally:
        await transport.aclose()


def churn_process(url: str, rate: float, seconds: float, live: int, results: Any) -> None:
    """The churn in a process of its own: the watchers' JSON and httpx work must not slow it."""

    async def main() -> Outcome:
        outcome = Outcome("")
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
            await churn(client, rate, seconds, live, outcome)
        return outcome

    done = asyncio.run(main())
    results.put((done.ops, done.ops_seconds, done.errors))


async def churn(client: httpx.AsyncClient, rate: float, seconds: float, live: int, outcome: Outcome) -> None:
    joined: list[str] = []
    started = time.monotonic()
    serial = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = started + outcome.ops / rate
        if due > time.monotonic():
            await asyncio.sleep(due - time.monotonic())
        if len(joined) < live or (serial % 2 == 0 and len(joined) < 2 * live):
            serial += 1
            workload = f"churn-{serial}"
            registration = {
                "id": workload,
                "service": "reviews",
                "endpoints": [{"address": "127.0.0.1", "port": 20000 + serial % 40000}],
            }
            response = await client.put(f"/v1/workloads/{workload}", json=registration)
            joined.append(workload)
        else:
            serial += 1
            response = await client.delete(f"/v1/workloads/{joined.pop(0)}")
        if response.status_code >= 300:
            outcome.errors.append(f"churn: {response.status_code} {response.text[:100]}")
        outcome.ops += 1
    outcome.ops_seconds = elapsed


async def drive(
    url: str,
    service: psutil.Process,
    opts: argparse.Namespace,
    outcome: Outcome,
    churned: tuple[str, psutil.Process] | None = None,
) -> None:
    """Watchers on ``url``; the churn there too, or on ``churned`` (another replica)."""
    port = int(url.rsplit(":", 1)[1])
    churn_url = churned[0] if churned is not None else url
    if opts.registered:
        await register_quiet(churn_url, opts.registered)
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as driver:
        stop = asyncio.Event()
        states = watches(outcome.mode, opts.watchers)
        tasks = [asyncio.create_task(watch(port, i, s, stop)) for i, s in enumerate(states)]
        start_version = (await driver.get("/v1/snapshot")).json()["version"]
        await asyncio.sleep(1.0)  # every watch registered and holding
        settled = time.monotonic() + 60  # with --registered, each first snapshot is large
        while time.monotonic() < settled:
            if all(s.answers or s.errors for s in states):
                break
            await asyncio.sleep(0.05)
        cpu = cpu_seconds(service)
        churned_cpu = cpu_seconds(churned[1]) if churned is not None else 0.0
        context = mp.get_context("spawn")
        results = context.Queue()
        worker = context.Process(
            target=churn_process, args=(churn_url, opts.rate, opts.seconds, opts.live, results), daemon=True
        )
        worker.start()
        try:
            got = await asyncio.to_thread(results.get, True, opts.seconds + 60)
            outcome.ops, outcome.ops_seconds, errors = got
            outcome.errors += errors
        finally:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        outcome.service_cpu = cpu_seconds(service) - cpu
        if churned is not None:
            outcome.churned_cpu = cpu_seconds(churned[1]) - churned_cpu
        ended = time.monotonic()
        # The truth is the churned replica's: the watchers' must come to serve the same.
        async with httpx.AsyncClient(base_url=churn_url, timeout=10.0) as source:
            truth = (await source.get("/v1/snapshot")).json()
        outcome.versions = truth["version"] - start_version
        wanted = endpoints_of(truth)
        deadline = ended + 30
        while time.monotonic() < deadline:
            if all(s.holds(truth, wanted) for s in states):
                outcome.converged = time.monotonic() - ended
                break
            await asyncio.sleep(0.005)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        outcome.errors += [e for s in states for e in s.errors]
        outcome.answers = sum(s.answers for s in states) / len(states)
        quiet = [s.answers for s in states if s.hosts is not None and REVIEWS not in s.hosts]
        outcome.quiet_answers = max(quiet) if quiet else None
        outcome.received = sum(s.received for s in states) / len(states)


def run(store: str, mode: str, opts: argparse.Namespace) -> Outcome:
    outcome = Outcome(store, mode)
    with tempfile.TemporaryDirectory(prefix="meshlib-churn-") as tmp, contextlib.ExitStack() as stack:
        url = None
        if store != "sqlite":
            url, _ = stack.enter_context(running_etcd(Path(tmp) / "etcd"))
        service = ServiceProcess(Path(tmp) / "data", store_url=url)
        other = ServiceProcess(Path(tmp) / "data-a", store_url=url) if store == "etcd-replicas" else None
        try:
            service.start(Deadline(60))
            churned = None
            if other is not None:
                other.start(Deadline(60))
                churned = (other.url, other.ps())
            budget = opts.seconds + 90 + opts.registered / 100
            asyncio.run(asyncio.wait_for(drive(service.url, service.ps(), opts, outcome, churned), budget))
        finally:
            for process in (service, other):
                if process is None:
                    continue
                process.stop()
                if outcome.errors:
                    print(f"{store}: the service's log ends with:\n{process.log_tail(4000)}", file=sys.stderr)
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="registry operations per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--live", type=int, default=50, help="churning workloads registered at a time")
    parser.add_argument("--store", default="sqlite,etcd", help=f"comma-separated of {', '.join(STORES)}")
    parser.add_argument(
        "--registered", type=int, default=0, help="quiet workloads registered before the churn"
    )
    parser.add_argument("--snapshots", default=",".join(MODES), help=f"comma-separated of {', '.join(MODES)}")
    opts = parser.parse_args()
    modes = opts.snapshots.split(",")
    if not set(modes) <= set(MODES):
        parser.error(f"--snapshots takes a comma-separated subset of {', '.join(MODES)}")
    if not set(opts.store.split(",")) <= set(STORES):
        parser.error(f"--store takes a comma-separated subset of {', '.join(STORES)}")
    outcomes = [run(store, mode, opts) for mode in modes for store in opts.store.split(",")]
    rows = []
    for o in outcomes:
        converged = f"{o.converged * 1000:.0f} ms" if o.converged is not None else "**not within 30 s**"
        rows.append(
            f"| {o.store} | {o.mode} | {o.ops / o.ops_seconds:.0f} | {o.versions} | {converged} | "
            f"{o.answers:,.0f}{'' if o.quiet_answers is None else f' (quiet: at most {o.quiet_answers})'} | "
            f"{o.received / 1024:,.0f} KiB | "
            f"{o.service_cpu / o.ops_seconds * 100:.0f}%"
            f"{'' if o.churned_cpu is None else f' (A: {o.churned_cpu / o.ops_seconds * 100:.0f}%)'} | "
            f"{len(o.errors)} |"
        )
    errors = [
        f"- {o.store}, {o.mode}: {len(o.errors)} errors, first: `{o.errors[0]}`" for o in outcomes if o.errors
    ]
    body = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/registry_churn.py --watchers {opts.watchers} "
            f"--rate {opts.rate:g} --seconds {opts.seconds:g} --live {opts.live} --store {opts.store} "
            f"--snapshots {opts.snapshots}{f' --registered {opts.registered}' if opts.registered else ''}`  ",
            f"Machine: {machine()}; the service, etcd and the driver share it  ",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"{opts.watchers} watchers (JSON-parsed snapshots, ACKed) while workloads with one endpoint "
            f"join and leave at {opts.rate:g} operations/s for {opts.seconds:g} s; converged = from the "
            "last operation until every watcher holds exactly the service's endpoints at its version. "
            "snapshots: `full` = the whole snapshot on every change; `delta` = what changed since the "
            "version held; `scoped` = deltas, and half the watchers declare the churned service as their "
            "egress host, half a quiet one (they must hold none of the churn). Answers and bytes: per "
            "watcher, over the churn and the convergence."
            + (
                f" {opts.registered:,} quiet workloads (50 other services) were registered before the churn."
                if opts.registered
                else ""
            )
            + (
                " `etcd-replicas`: two replicas on one etcd, the churn sent to A, every watcher on B;"
                " the CPU is B's, A's in brackets."
                if "etcd-replicas" in opts.store
                else ""
            ),
            "",
            "| store | snapshots | operations/s | versions made | converged after the churn "
            "| answers per watcher | received per watcher | service CPU (one core = 100%) | errors |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            *(["", *errors] if errors else []),
        ]
    )
    print(body)
    write_section("Registry churn (config service)", body)
    sys.exit(0 if all(o.converged is not None and not o.errors for o in outcomes) else 1)


if __name__ == "__main__":
    main()
