"""Shared pieces of the data-plane reliability tests: replicas of ``reviews`` as real processes
(so ``kill -9`` is real), the policy a mesh client calls them with, bounded load loops that
time every request, and a count of what the client process holds (threads, tasks, sockets)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from meshlib import Mesh
from tests.servers import free_port, wait_for

REPLICA = Path(__file__).with_name("_replica.py")
REVIEWS_URL = "http://reviews/api"
# The replicas' own policy: nothing that concerns them (a STATIC entry: no DNS look-ups).
REPLICA_POLICY = (
    "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: none}\nspec:\n"
    "  {hosts: [none.example], location: MESH_EXTERNAL, resolution: STATIC,\n"
    "   ports: [{number: 80, name: http}], endpoints: [{address: 127.0.0.9}]}\n"
)


@dataclass
class Replica:
    name: str
    port: int
    mode: str
    proc: subprocess.Popen[bytes] | None = None


class Replicas:
    """Replicas of ``reviews``, each ``tests/reliability/_replica.py`` in its own process on
    its own port (kept across restarts). Stopped (by pid) when the ``with`` block ends."""

    def __init__(self, folder: Path, modes: dict[str, str]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "replica-policy.yaml").write_text(REPLICA_POLICY)
        self.replicas = {name: Replica(name, free_port(), mode) for name, mode in modes.items()}

    def __enter__(self) -> Replicas:
        try:
            for replica in self.replicas.values():
                self._spawn(replica)
            for replica in self.replicas.values():
                self._wait_ready(replica)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for replica in self.replicas.values():
            self._end(replica)

    @property
    def ports(self) -> dict[str, int]:
        return {name: replica.port for name, replica in self.replicas.items()}

    def kill(self, name: str) -> None:
        """``kill -9``: no drain, no deregistration, sockets torn down by the kernel."""
        replica = self.replicas[name]
        assert replica.proc is not None
        os.kill(replica.proc.pid, signal.SIGKILL)
        assert replica.proc.wait(10) == -signal.SIGKILL
        replica.proc = None

    def restart(self, name: str, mode: str | None = None) -> None:
        """Start ``name`` again on its port; return once it answers."""
        replica = self.replicas[name]
        assert replica.proc is None, f"{name} is still running"
        if mode is not None:
            replica.mode = mode
        self._spawn(replica)
        self._wait_ready(replica)

    def hits(self, name: str) -> int:
        """``/api`` requests the replica has received (asked directly, not through the mesh)."""
        return int(httpx.get(f"http://127.0.0.1:{self.replicas[name].port}/hits", timeout=5).text)

    def _spawn(self, replica: Replica) -> None:
        replica.proc = subprocess.Popen(
            [
                sys.executable,
                str(REPLICA),
                str(replica.port),
                replica.name,
                replica.mode,
                str(self.folder / "replica-policy.yaml"),
                str(self.folder / f"data-{replica.name}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ready(self, replica: Replica) -> None:
        ready = f"http://127.0.0.1:{replica.port}/.well-known/meshlib/ready"

        def answers() -> bool:
            assert replica.proc is not None
            assert replica.proc.poll() is None, f"replica {replica.name} exited: {replica.proc.returncode}"
            try:
                return httpx.get(ready, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(answers, 20), f"replica {replica.name} did not become ready"

    def _end(self, replica: Replica) -> None:
        proc, replica.proc = replica.proc, None
        if proc is not None:  # nothing to drain for: the test is over
            proc.kill()
            proc.wait(10)


def reviews_policy(ports: dict[str, int], *, retries: str, traffic_policy: str = "") -> str:
    """A ServiceEntry for the replicas (labelled ``replica: NAME``), a DestinationRule with
    ``traffic_policy`` (YAML flow mappings, e.g. ``loadBalancer: {simple: ROUND_ROBIN}``, one
    a line) and a VirtualService whose one route has ``retries`` (a flow mapping)."""
    endpoints = "\n".join(
        f"  - {{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{replica: {name}}}}}"
        for name, port in ports.items()
    )
    policy_lines = "".join(f"    {line}\n" for line in traffic_policy.splitlines() if line.strip())
    rule = (
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n"
        f"spec:\n  host: reviews\n  trafficPolicy:\n{policy_lines}"
        if policy_lines
        else ""
    )
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews}\nspec:\n"
        "  hosts: [reviews]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        f"  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n{endpoints}\n"
        + rule
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\n"
        f"spec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n"
        f"    retries: {retries}\n"
    )


@contextmanager
def client_mesh(folder: Path, policy: str) -> Iterator[Mesh]:
    """A Mesh ("frontend", static mode) on ``policy``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "client-policy.yaml"
    path.write_text(policy)
    with Mesh("frontend", config=path, data_dir=folder / "client-data", static_poll_interval=0.05) as mesh:
        mesh.rng.seed(20261205)
        yield mesh


def events(mesh: Mesh, kind: str) -> int:
    """The mesh's own counter ``kind`` (meshlib_events), summed over clusters."""
    return sum(n for (k, _), n in mesh.metrics.counters().items() if k == kind)


@dataclass
class Result:
    """One request: when it started (monotonic), how long it took, who answered or what failed."""

    started: float
    took: float
    replica: str | None = None
    status: int | None = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


async def timed(client: httpx.AsyncClient, url: str = REVIEWS_URL) -> Result:
    started = time.monotonic()
    try:
        response = await client.get(url)
    except httpx.HTTPError as exc:
        return Result(started, time.monotonic() - started, error=exc)
    return Result(
        started, time.monotonic() - started, response.headers.get("x-replica"), response.status_code
    )


def timed_sync(client: httpx.Client, url: str = REVIEWS_URL) -> Result:
    started = time.monotonic()
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        return Result(started, time.monotonic() - started, error=exc)
    return Result(
        started, time.monotonic() - started, response.headers.get("x-replica"), response.status_code
    )


@dataclass
class Paced:
    """An open-loop load: request ``i`` starts at ``i / rate`` s whatever the earlier ones do."""

    results: list[Result] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # how late each request started (s)
    watched: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, value)


async def paced_load(
    client: httpx.AsyncClient,
    rate: float,
    count: int,
    at: dict[float, Callable[[], None]] | None = None,
    watch: Callable[[], int] | None = None,
    bound: float = 60.0,
) -> Paced:
    """``count`` requests at ``rate`` per second; ``at`` runs actions (in a thread, so the
    load goes on meanwhile) once that many seconds have passed; ``watch`` is read as each
    request starts. Bounded: every request has ended within ``bound`` seconds of the schedule's
    end, or this raises."""
    out = Paced()
    actions = sorted((at or {}).items())
    tasks: list[asyncio.Task[Result]] = []
    background: list[asyncio.Future[None]] = []
    begun = time.monotonic()
    for i in range(count):
        due = begun + i / rate
        while actions and actions[0][0] <= due - begun:
            background.append(asyncio.ensure_future(asyncio.to_thread(actions.pop(0)[1])))
        pause = due - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        out.lag.append(time.monotonic() - due)
        if watch is not None:
            out.watched.append((time.monotonic(), watch()))
        tasks.append(asyncio.ensure_future(timed(client)))
    for _, action in actions:
        background.append(asyncio.ensure_future(asyncio.to_thread(action)))
    async with asyncio.timeout(bound):
        out.results = list(await asyncio.gather(*tasks))
        await asyncio.gather(*background)
    return out


async def closed_load(
    client: httpx.AsyncClient, count: int, concurrency: int, bound: float = 60.0
) -> list[Result]:
    """``count`` requests, ``concurrency`` at a time (a new one as soon as one ends), all
    ended within ``bound`` seconds or this raises."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Result:
        async with gate:
            return await timed(client)

    async with asyncio.timeout(bound):
        return list(await asyncio.gather(*(one() for _ in range(count))))


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in 0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def latencies(results: list[Result]) -> str:
    """p50/p99/max of the requests' times, for the report a test prints."""
    took = [r.took * 1000 for r in results]
    return f"p50/p99/max {percentile(took, 0.5):.0f}/{percentile(took, 0.99):.0f}/{max(took):.0f} ms"


@dataclass(frozen=True)
class Held:
    """What this process holds: threads, open descriptors, TCP sockets to given ports."""

    threads: int
    fds: int
    sockets: int

    @staticmethod
    def now(ports: set[int]) -> Held:
        me = psutil.Process()
        sockets = [c for c in me.net_connections(kind="tcp") if c.raddr and c.raddr.port in ports]
        return Held(threading.active_count(), me.num_fds(), len(sockets))


def rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status_file:
        for line in status_file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
