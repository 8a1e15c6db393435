"""Watch fan-out benchmark: how fast does one config change reach N watching workloads?

Method
------
* The config service runs in its own process (``serve_forever`` in a ``python -c``
  subprocess, on a free port of 127.0.0.1, over a fresh temporary data dir), so that its
  RSS and CPU can be read with psutil and the simulated workloads do not share its GIL.
* N simulated workloads run as asyncio tasks spread over a few client processes
  (multiprocessing, ``spawn``; one per 500 workloads, at most one per core). Each one
  registers (``PUT /v1/workloads/{id}``; no endpoints unless ``--endpoints``), then
  loops on ``POST /v1/watch`` as ``meshlib.watcher.Watcher`` does: it sends the version
  it has and the ACK of the version the previous round brought. On a new version it
  takes the receipt time (``time.monotonic()``: CLOCK_MONOTONIC, system-wide on Linux,
  so comparable across the processes of one host), then handles the snapshot:
  ``--decode compile`` (default) parses and compiles it with
  ``meshlib.protocol.decode_snapshot`` like a real workload, ``json`` only
  parses it, ``none`` only reads the version at its head. With ``--endpoints`` every
  snapshot lists all N workloads, and compiling N snapshots of N entries on two cores
  would measure the simulated workloads rather than the service; the cost of one
  compilation is reported separately.
* ``--client raw`` (default, with ``httpx`` for comparison) is a minimal HTTP/1.1
  keep-alive client on asyncio streams; ``httpx`` gives each workload its own
  ``httpx.AsyncClient`` as Watcher does. At N=1000 the httpx clients need about three
  times the service's CPU, so on a small machine they, not the service, set the pace.
* Each round, the driver changes one VirtualService through ``POST /v1/apply`` (t0 is
  taken just before the request is sent) and waits until the registry's summary
  (``GET /v1/workloads?summary=true``, counts only) shows every workload synced at the new
  version. It starts polling once every client process has reported (over a
  multiprocessing queue) that all its workloads received the version, so that polling
  does not compete with the fan-out; ``--eager-poll`` polls from t0 on. (Up to commit
  76181fa the driver polled the whole listing, 60-290 ms of the service's event loop at
  N=5000, held the ACKs behind it and added it to the service's CPU per round.) One whole
  listing after the round gives each workload's ``lastSeen``, the time its ACK came in.
  Reported per round:
  - apply -> receive: receipt time - t0, for every workload;
  - apply -> decoded: the same once the workload has handled the snapshot;
  - apply -> last ACK (server): the latest ``lastSeen`` the service recorded with the
    ACKs (the service's wall clock against the driver's at t0, one host);
  - apply -> all ACKed (poller): when the driver first saw every ACK (an upper bound).
* The service's RSS is read idle (no workloads), connected (N watches held), at its
  peak during the rounds (sampled every 10 ms) and after the last fan-out; its CPU time
  per round too, and the share of the cores other processes took meanwhile.
* ``--nodelay forced`` patches asyncio in the service process only so that every
  accepted socket gets TCP_NODELAY: a check that Nagle's algorithm costs nothing. (Up
  to commit bd4880d the service bound its socket with ``proto=0``; asyncio then left
  Nagle on, and as Starlette sends a response's headers and body in two writes, every
  response on a kept-alive connection waited ~40 ms for the client's delayed ACK.)
* Every run is bounded (``--time-limit`` per case, ``--rounds``, ``--round-timeout``);
  everything talks to 127.0.0.1 only; the processes started here, and only those, are
  stopped by pid when the run ends, whether it succeeded or not.

The results replace the "## Watch fan-out (config service)" section of
``benchmarks/RESULTS.md`` (or the section named with ``--title-suffix``); the other
sections of that file are left as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import resource
import shlex
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil  # type: ignore[import-untyped]
from _results import RESULTS, cpu_model, write_results

from meshlib._net import free_port as _free_port
from meshlib.controlplane.etcd_process import running_etcd
from meshlib.protocol import EPOCH_HEADER, decode_snapshot
from meshlib.snapshot_delta import HeldSnapshot

HOST = "127.0.0.1"
SECTION = "## Watch fan-out (config service)"
SERVICE_SRC = "src/meshlib/controlplane"
MiB = 1024 * 1024
DECODE_MODES = ("compile", "json", "none")
BUSY_MACHINE = 0.10  # other processes using more of the cores than this make a case suspect
VERSION_HEAD = b'{"version":'
CLIENT_KINDS = ("httpx", "httpx-shared", "raw")

NODELAY_PATCH = """
import asyncio.base_events, socket
def _nodelay(sock):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
asyncio.base_events._set_nodelay = _nodelay
"""
SERVER_CODE = """
import resource, sys
from pathlib import Path
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
want = 65536 if hard == resource.RLIM_INFINITY else hard
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
from meshlib.controlplane.server import serve_forever
# The simulated workloads carry no bootstrap tokens: the open registry mode (loopback only).
store = sys.argv[4] if len(sys.argv) > 4 else None  # etcd://...: the etcd store
serve_forever(Path(sys.argv[1]), host=sys.argv[2], port=int(sys.argv[3]), open_registry=True, store_url=store)
"""


# --- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    workloads: list[int]
    rounds: int
    clients: list[str]
    nodelay: list[str]
    stores: list[str]
    snapshots: list[str]
    client_procs: int  # 0: automatic
    decode: str
    endpoints: bool
    wait: float
    pause: float
    poll_interval: float
    eager_poll: bool
    round_timeout: float
    time_limit: float
    results: Path | None
    title: str


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--workloads", default="100,1000", help="comma-separated N values (default 100,1000)")
    p.add_argument("--rounds", type=int, default=10, help="config changes per case (default 10)")
    p.add_argument(
        "--client",
        default="raw,httpx",
        help="comma-separated client kinds to compare (default raw,httpx). raw: hand-written "
        "HTTP/1.1 over asyncio streams; httpx: one AsyncClient per workload, like Watcher; "
        "httpx-shared: one pooled AsyncClient per client process",
    )
    p.add_argument(
        "--nodelay",
        default="as-is",
        help="comma-separated: as-is (the service unchanged) and/or forced (TCP_NODELAY forced on "
        "the service's accepted sockets, to measure Nagle's cost) (default as-is)",
    )
    p.add_argument(
        "--store",
        default="sqlite",
        help="comma-separated: sqlite (the embedded default) and/or etcd (a local etcd-server "
        "started per case; its CPU and RSS reported apart) (default sqlite)",
    )
    p.add_argument(
        "--snapshots",
        default="delta",
        help="comma-separated: delta (workloads ask for what changed since the version they hold, "
        "as Watcher does), full (the whole snapshot every time) and/or scoped (deltas, and each "
        "workload declares one of the 20 services as its egress host) (default delta)",
    )
    p.add_argument("--client-procs", type=int, default=0, help="client processes (default: automatic)")
    p.add_argument(
        "--decode",
        choices=DECODE_MODES,
        default="compile",
        help="what a workload does with a new snapshot: compile (json + decode_snapshot, as "
        "Watcher does; default), json (parse only) or none (read the version only)",
    )
    p.add_argument(
        "--endpoints",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="register each workload with one endpoint, so every snapshot lists all N (default off)",
    )
    p.add_argument("--wait", type=float, default=30.0, help="long-poll wait sent by workloads (s)")
    p.add_argument("--pause", type=float, default=0.0, help="pause between the last ACK and next apply (s)")
    p.add_argument(
        "--poll-interval", type=float, default=0.02, help="GET /v1/workloads?summary=true poll interval (s)"
    )
    p.add_argument(
        "--eager-poll",
        action="store_true",
        help="poll the registry summary from t0 on, instead of after the clients report receipt",
    )
    p.add_argument("--round-timeout", type=float, default=30.0, help="give up on a round after this (s)")
    p.add_argument("--time-limit", type=float, default=120.0, help="hard limit for one case (s)")
    p.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md to update")
    p.add_argument("--no-write", action="store_true", help="print the section, do not write RESULTS.md")
    p.add_argument(
        "--title-suffix",
        default="",
        help=f"write the section '{SECTION}, <suffix>' instead, so that several configurations "
        "keep a section each",
    )
    a = p.parse_args(argv)
    counts = [int(x) for x in a.workloads.split(",") if x.strip()]
    if not counts or min(counts) < 1 or a.rounds < 1:
        p.error("--workloads needs positive counts and --rounds at least 1")
    clients = [c.strip() for c in a.client.split(",") if c.strip()]
    if not clients or not set(clients) <= set(CLIENT_KINDS):
        p.error(f"--client takes a comma-separated subset of {', '.join(CLIENT_KINDS)}")
    nodelay = [c.strip() for c in a.nodelay.split(",") if c.strip()]
    if not nodelay or not set(nodelay) <= {"as-is", "forced"}:
        p.error("--nodelay takes as-is, forced or both")
    stores = [c.strip() for c in a.store.split(",") if c.strip()]
    if not stores or not set(stores) <= {"sqlite", "etcd"}:
        p.error("--store takes sqlite, etcd or both")
    snapshots = [c.strip() for c in a.snapshots.split(",") if c.strip()]
    if not snapshots or not set(snapshots) <= {"delta", "full", "scoped"}:
        p.error("--snapshots takes a comma-separated subset of delta, full, scoped")
    return Options(
        workloads=counts,
        stores=stores,
        snapshots=snapshots,
        rounds=a.rounds,
        clients=clients,
        nodelay=nodelay,
        client_procs=a.client_procs,
        decode=a.decode,
        endpoints=a.endpoints,
        wait=a.wait,
        pause=a.pause,
        poll_interval=a.poll_interval,
        eager_poll=a.eager_poll,
        round_timeout=a.round_timeout,
        time_limit=a.time_limit,
        results=None if a.no_write else a.results,
        title=f"{SECTION}, {a.title_suffix}" if a.title_suffix else SECTION,
    )


def client_procs_for(n: int, opts: Options) -> int:
    """One process per 500 workloads, at most one per core (the service needs one too)."""
    if opts.client_procs > 0:
        return min(opts.client_procs, n)
    return max(1, min(os.cpu_count() or 1, math.ceil(n / 500)))


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise TimeoutError(f"time limit reached while {what}")


# --- the config service process -----------------------------------------------------------


def free_port() -> int:
    return _free_port(HOST)  # outside the ephemeral range (see meshlib._net)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


class ServiceProcess:
    """``serve_forever`` in a subprocess over ``data_dir``; stopped by its pid only."""

    def __init__(self, data_dir: Path, *, force_nodelay: bool = False, store_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.store_url = store_url
        self.etcd: psutil.Process | None = None  # the etcd behind the service (--store etcd)
        self.code = (NODELAY_PATCH if force_nodelay else "") + SERVER_CODE
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = data_dir.parent / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline: Deadline) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    self.code,
                    str(self.data_dir),
                    HOST,
                    str(self.port),
                    *([self.store_url] if self.store_url else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        while not self._healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"config service exited ({self.proc.returncode}): {self.log_tail()}")
            deadline.check("starting the config service")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text(encoding="utf-8").strip()

    def ps(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --- simulated workloads (client processes) -----------------------------------------------


class Transport(Protocol):
    epoch: str | None  # the meshlib-epoch header of the last response (sent back with a delta)

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxTransport:
    def __init__(self, client: httpx.AsyncClient, owned: bool) -> None:
        self._client = client
        self._owned = owned
        self.epoch: str | None = None

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"}
        response = await self._client.request(method, path, content=body, headers=headers)
        self.epoch = response.headers.get(EPOCH_HEADER, self.epoch)
        return response.status_code, response.content

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()


class RawTransport:
    """Minimal HTTP/1.1 keep-alive client: one connection, Content-Length bodies only."""

    def __init__(self, port: int, timeout: float) -> None:
        self._port = port
        self._timeout = timeout
        self.epoch: str | None = None
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        try:
            return await asyncio.wait_for(self._exchange(method, path, body), self._timeout)
        except BaseException:
            await self.aclose()
            raise

    async def _exchange(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self._port)
        reader, writer = self._streams
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {HOST}:{self._port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status = int((await reader.readuntil(b"\r\n")).split()[1])
        length = 0
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == EPOCH_HEADER.encode():
                self.epoch = value.strip().decode()
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by the raw client")
        return status, await reader.readexactly(length) if length else b""

    async def aclose(self) -> None:
        streams, self._streams = self._streams, None
        if streams is not None:
            streams[1].close()


@dataclass
class ClientPlan:
    index: int
    url: str
    port: int
    ids: list[str]
    client: str
    decode: str
    endpoints: bool
    wait: float
    delta: bool
    scoped: bool = False  # each workload's egress host: one of the 20 services


class Receipt(NamedTuple):
    """One new snapshot at one workload; times are ``time.monotonic()``."""

    workload: str
    version: int
    received: float
    decoded: float
    size: int  # bytes of the watch answer's body


class Recorder:
    """What one client process saw; tells the driver when all its workloads have a version."""

    def __init__(self, plan: ClientPlan, progress: mp.Queue[Any]) -> None:
        self.index = plan.index
        self.expected = len(plan.ids)
        self.progress = progress
        self.receipts: list[Receipt] = []
        self.errors: list[str] = []
        self._counts: dict[int, int] = {}

    def received(self, workload_id: str, version: int, received: float, decoded: float, size: int) -> None:
        self.receipts.append(Receipt(workload_id, version, received, decoded, size))
        count = self._counts[version] = self._counts.get(version, 0) + 1
        if count == self.expected:
            self.progress.put((self.index, version))

    def error(self, message: str) -> None:
        self.errors.append(message)


def registration(workload_id: str, plan: ClientPlan) -> bytes:
    """What ``PUT /v1/workloads/{id}`` carries: 20 services, one endpoint each if asked."""
    number = int(workload_id.rsplit("-", 1)[1])
    body = {
        "id": workload_id,
        "service": f"bench-svc-{number % 20}",
        "namespace": "default",
        "labels": {"version": "v1"},
        "endpoints": [{"address": HOST, "port": 20000 + number}] if plan.endpoints else [],
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "meshlib_version": "bench",
    }
    return json.dumps(body).encode()


def decode(data: bytes, mode: str, held: HeldSnapshot | None) -> tuple[int, HeldSnapshot | None]:
    """The snapshot's version, after the work ``mode`` asks for, and the snapshot held after
    it (a delta applied to ``held``, as Watcher does; none in mode ``none``)."""
    if mode == "none" and data.startswith(VERSION_HEAD):
        return int(data[len(VERSION_HEAD) : data.index(b",")]), None
    payload = json.loads(data)
    if "base" in payload:
        if held is None:
            raise ValueError("a delta came with no snapshot held")
        payload = held.apply(payload)
    else:
        held = HeldSnapshot(payload)
    if mode == "compile":
        decode_snapshot(payload)
    return int(payload["version"]), held


RETRYABLE = (OSError, httpx.HTTPError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError)


async def register(workload_id: str, transport: Transport, plan: ClientPlan, recorder: Recorder) -> None:
    while True:
        try:
            status, data = await transport.request(
                "PUT", f"/v1/workloads/{workload_id}", registration(workload_id, plan)
            )
        except RETRYABLE as exc:
            status, data = 0, repr(exc).encode()
        if status == 200:
            return
        recorder.error(f"register {status}: {data[:200]!r}")
        await asyncio.sleep(0.2)


async def run_workload(workload_id: str, transport: Transport, plan: ClientPlan, recorder: Recorder) -> None:
    """Register, then watch forever like Watcher.round: send version, wait and last ACK."""
    await register(workload_id, transport, plan, recorder)
    version, ack, held = -1, None, None
    while True:
        body: dict[str, Any] = {"version": version, "wait": plan.wait, "workload": workload_id}
        if ack is not None:
            body["ack"] = ack
        if plan.delta and (held is not None or plan.decode == "none"):
            body["delta"], body["epoch"] = True, transport.epoch
        if plan.scoped:
            service = f"bench-svc-{(int(workload_id.rsplit('-', 1)[1]) + 1) % 20}"
            body["hosts"] = [f"default/{service}.default.svc.cluster.local"]
        try:
            status, data = await transport.request("POST", "/v1/watch", json.dumps(body).encode())
        except RETRYABLE as exc:
            status, data = 0, repr(exc).encode()
        received = time.monotonic()
        if status == 204:
            ack = None
            continue
        if status != 200:
            recorder.error(f"watch {status}: {data[:200]!r}")
            await asyncio.sleep(0.2)
            continue
        version, held = decode(data, plan.decode, held)
        ack = version
        recorder.received(workload_id, version, received, time.monotonic(), len(data))


def make_transports(plan: ClientPlan) -> list[Transport]:
    timeout = httpx.Timeout(10.0, read=plan.wait + 10.0)
    # One TLS context for all (unused over http://): httpx builds one per client otherwise,
    # about 20 ms of CPU each, which would dominate the setup of hundreds of workloads.
    tls = ssl.create_default_context()
    if plan.client == "raw":
        return [RawTransport(plan.port, plan.wait + 10.0) for _ in plan.ids]
    if plan.client == "httpx-shared":
        size = len(plan.ids) + 8
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        shared = httpx.AsyncClient(base_url=plan.url, timeout=timeout, limits=limits, verify=tls)
        return [HttpxTransport(shared, owned=i == 0) for i in range(len(plan.ids))]
    return [
        HttpxTransport(httpx.AsyncClient(base_url=plan.url, timeout=timeout, verify=tls), owned=True)
        for _ in plan.ids
    ]


async def client_main_async(plan: ClientPlan, stop: MpEvent, recorder: Recorder) -> None:
    transports = make_transports(plan)
    tasks = [
        asyncio.create_task(run_workload(wid, t, plan, recorder))
        for wid, t in zip(plan.ids, transports, strict=True)
    ]
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:
                recorder.error(f"workload task crashed: {failed[0].exception()!r}")
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(t.aclose() for t in transports), return_exceptions=True)


def client_main(plan: ClientPlan, stop: MpEvent, progress: mp.Queue[Any], results: mp.Queue[Any]) -> None:
    """Entry point of one client process: its workloads until ``stop``, then its receipts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us through ``stop``
    raise_fd_limit()
    recorder = Recorder(plan, progress)
    try:
        asyncio.run(client_main_async(plan, stop, recorder))
    except BaseException as exc:
        recorder.error(f"client process {plan.index} failed: {exc!r}")
    results.put((plan.index, recorder.receipts, recorder.errors))


class ClientProcesses:
    """The client processes of one run; stopped through an Event, then by pid if need be."""

    def __init__(self, service: ServiceProcess, case: Case, procs: int, opts: Options) -> None:
        self._ctx = mp.get_context("spawn")
        self.stop_event = self._ctx.Event()
        self.results: mp.Queue[Any] = self._ctx.Queue()
        self.progress: mp.Queue[Any] = self._ctx.Queue()
        ids = [f"bench-{i:05d}" for i in range(case.n)]
        delta = case.snapshots != "full"
        self.plans = [
            ClientPlan(
                *(i, service.url, service.port, ids[i::procs], case.client),
                *(opts.decode, opts.endpoints, opts.wait, delta, case.snapshots == "scoped"),
            )
            for i in range(procs)
        ]
        self.processes: list[BaseProcess] = []

    def start(self) -> None:
        for plan in self.plans:
            proc = self._ctx.Process(
                target=client_main,
                args=(plan, self.stop_event, self.progress, self.results),
                name=f"fanout-client-{plan.index}",
            )
            proc.start()
            self.processes.append(proc)

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.processes:
            with contextlib.suppress(psutil.Error, ValueError):
                times = psutil.Process(proc.pid).cpu_times()
                total += times.user + times.system
        return total

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.processes)

    def wait_received(self, version: int, deadline: Deadline) -> None:
        """Until every client process reported that all its workloads received ``version``."""
        pending = {plan.index for plan in self.plans}
        while pending:
            try:
                index, got = self.progress.get(timeout=max(0.01, min(1.0, deadline.left())))
            except queue.Empty:
                if not self.alive():
                    raise RuntimeError("a client process died") from None
                deadline.check(f"waiting for workloads to receive version {version}")
                continue
            if got == version:
                pending.discard(index)

    def collect(self, timeout: float) -> tuple[list[Receipt], list[str]]:
        """Ask the clients to stop and gather what they recorded."""
        self.stop_event.set()
        receipts: list[Receipt] = []
        errors: list[str] = []
        end = time.monotonic() + timeout
        for _ in self.processes:
            try:
                _, got, errs = self.results.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                errors.append("a client process sent no results")
                break
            receipts.extend(got)
            errors.extend(errs)
        return receipts, errors

    def stop(self) -> None:
        self.stop_event.set()
        for proc in self.processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


# --- the driver ---------------------------------------------------------------------------


def virtual_service(round_no: int) -> dict[str, Any]:
    """The resource changed every round: a route timeout and a request header."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "bench-reviews", "namespace": "default"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "timeout": f"{round_no + 1}s",
                    "headers": {"request": {"set": {"x-bench-round": str(round_no)}}},
                    "route": [{"destination": {"host": "reviews"}}],
                }
            ],
        },
    }


@dataclass
class RoundResult:
    version: int
    t0: float  # monotonic, just before POST /v1/apply
    apply_seconds: float
    last_ack_server: float  # from the service's lastSeen of the ACKs
    all_acked_observed: float
    server_cpu: float
    client_cpu: float
    polls: int
    poll_seconds: list[float]


@dataclass(frozen=True)
class Case:
    n: int
    client: str
    nodelay: str
    store: str = "sqlite"
    snapshots: str = "delta"

    def __str__(self) -> str:
        return (
            f"N={self.n} client={self.client} nodelay={self.nodelay} store={self.store} "
            f"snapshots={self.snapshots}"
        )


@dataclass
class RunResult:
    case: Case
    procs: int
    rounds: list[RoundResult] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rss: dict[str, int] = field(default_factory=dict)
    payload_bytes: int = 0
    listing_seconds: float = math.nan  # one GET /v1/workloads on a quiet service
    other_load: float = math.nan  # share of all cores used by other processes during the rounds
    compile_seconds: float = math.nan
    setup_seconds: float = 0.0
    etcd_cpu: float = math.nan  # seconds of etcd's CPU over the rounds (--store etcd)
    etcd_rss: int = 0
    failure: str | None = None


class Driver:
    def __init__(self, service: ServiceProcess, n: int) -> None:
        self.service = service
        self.n = n
        self.http = httpx.Client(base_url=service.url, timeout=10.0)
        self.admin = {"authorization": f"Bearer {service.token}"}

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def rss(self) -> int:
        return int(self.service.ps().memory_info().rss)

    def apply(self, round_no: int) -> int:
        body = {"resources": [virtual_service(round_no)], "namespace": "default"}
        response = self.http.post("/v1/apply", json=body, headers=self.admin)
        response.raise_for_status()
        return int(response.json()["version"])

    def wait_acked(self, version: int | None, deadline: Deadline, interval: float) -> list[float]:
        """Poll the registry's summary (``GET /v1/workloads?summary=true``: counts, no
        listing) until all N workloads are synced at ``version`` (None: the service's current
        version, for setup); return the time of each poll."""
        durations: list[float] = []
        while True:
            started = time.monotonic()
            response = self.http.get("/v1/workloads", params={"summary": "true"})
            durations.append(time.monotonic() - started)
            response.raise_for_status()
            counts = response.json()
            target = counts["version"] if version is None else version
            if counts["version"] == target and counts["workloads"] >= self.n and counts["synced"] >= self.n:
                return durations
            deadline.check(f"waiting for ACKs of version {target} ({counts['synced']}/{self.n} so far)")
            time.sleep(interval)

    def listing(self) -> list[dict[str, Any]]:
        response = self.http.get("/v1/workloads")
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    def time_listing(self, repeat: int = 5) -> float:
        """Median duration of ``GET /v1/workloads`` (``meshctl status``) on a quiet service."""
        times = []
        for _ in range(repeat):
            started = time.monotonic()
            self.http.get("/v1/workloads").raise_for_status()
            times.append(time.monotonic() - started)
        return statistics.median(times)

    def snapshot(self) -> bytes:
        response = self.http.get("/v1/snapshot")
        response.raise_for_status()
        return response.content


def compile_cost(payload: bytes, repeat: int = 5) -> float:
    """Seconds one workload spends on ``payload``: JSON parsing plus decode_snapshot (median)."""

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        decode_snapshot(json.loads(payload))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run_round(
    driver: Driver, clients: ClientProcesses, round_no: int, opts: Options, limit: Deadline
) -> RoundResult:
    """Apply one change; wait for every receipt and ACK; time it all from t0."""
    deadline = Deadline(min(opts.round_timeout, limit.left()))
    server_cpu, client_cpu = cpu_seconds(driver.service.ps()), clients.cpu_seconds()
    t0_wall, t0 = time.time(), time.monotonic()
    version = driver.apply(round_no)
    applied = time.monotonic()
    if not opts.eager_poll:
        clients.wait_received(version, deadline)
    polls = driver.wait_acked(version, deadline, opts.poll_interval)
    observed = time.monotonic()
    server_cpu, client_cpu = cpu_seconds(driver.service.ps()) - server_cpu, clients.cpu_seconds() - client_cpu
    # Once, after the round: each workload's lastSeen is the time its ACK came in.
    last_ack = max(float(i["lastSeen"]) for i in driver.listing())
    return RoundResult(
        version=version,
        t0=t0,
        apply_seconds=applied - t0,
        last_ack_server=last_ack - t0_wall,
        all_acked_observed=observed - t0,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        polls=len(polls),
        poll_seconds=polls,
    )


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


class RssSampler:
    """Samples a process's RSS every few milliseconds on a thread; keeps the peak."""

    def __init__(self, proc: psutil.Process, interval: float = 0.01) -> None:
        self._proc = proc
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, int(self._proc.memory_info().rss))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class OtherLoad:
    """The share of the machine's CPU used by processes other than this benchmark's.

    The benchmark needs the cores to itself; this says whether it had them.
    """

    def __init__(self, service: ServiceProcess, clients: ClientProcesses) -> None:
        self._service = service
        self._clients = clients
        self._start = (0.0, 0.0, 0.0)
        self.share = math.nan

    def _sample(self) -> tuple[float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq"))
        ours = cpu_seconds(self._service.ps()) + self._clients.cpu_seconds() + cpu_seconds(psutil.Process())
        if self._service.etcd is not None:
            ours += cpu_seconds(self._service.etcd)
        return time.monotonic(), busy, ours

    def __enter__(self) -> OtherLoad:
        self._start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._sample()
        wall, busy, ours = (b - a for a, b in zip(self._start, end, strict=True))
        if wall > 0:
            self.share = max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


def measure(result: RunResult, service: ServiceProcess, clients: ClientProcesses, opts: Options) -> None:
    """Setup (idle RSS, N workloads connected), then the rounds; fills ``result`` as it goes."""
    limit = Deadline(opts.time_limit)
    service.start(limit)
    with Driver(service, result.case.n) as driver:
        driver.apply(0)
        result.rss["idle"] = driver.rss()
        started = time.monotonic()
        clients.start()
        driver.wait_acked(None, limit, 0.1)
        result.setup_seconds = time.monotonic() - started
        payload = driver.snapshot()
        result.payload_bytes = len(payload)
        result.compile_seconds = compile_cost(payload)
        time.sleep(0.5)
        result.rss["connected"] = driver.rss()
        result.listing_seconds = driver.time_listing()
        etcd_before = cpu_seconds(service.etcd) if service.etcd is not None else math.nan
        with RssSampler(service.ps()) as sampler, OtherLoad(service, clients) as other:
            for round_no in range(1, opts.rounds + 1):
                if not clients.alive():
                    raise RuntimeError("a client process died")
                result.rounds.append(run_round(driver, clients, round_no, opts, limit))
                time.sleep(opts.pause)
        result.other_load = other.share
        if service.etcd is not None:
            result.etcd_cpu = cpu_seconds(service.etcd) - etcd_before
            result.etcd_rss = service.etcd.memory_info().rss
        result.rss["peak"] = sampler.peak
        result.rss["after"] = driver.rss()


def run_case(case: Case, opts: Options) -> RunResult:
    """One case: a fresh service and data dir, N workloads, ``opts.rounds`` changes."""
    result = RunResult(case=case, procs=client_procs_for(case.n, opts))
    with tempfile.TemporaryDirectory(prefix="meshlib-fanout-") as tmp, contextlib.ExitStack() as stack:
        store_url = None
        if case.store == "etcd":
            store_url, etcd = stack.enter_context(running_etcd(Path(tmp) / "etcd"))
        service = ServiceProcess(
            Path(tmp) / "data", force_nodelay=case.nodelay == "forced", store_url=store_url
        )
        if case.store == "etcd":
            service.etcd = psutil.Process(etcd.pid)
        clients = ClientProcesses(service, case, result.procs, opts)
        try:
            measure(result, service, clients, opts)
        except (TimeoutError, RuntimeError, httpx.HTTPError, psutil.Error) as exc:
            result.failure = f"{type(exc).__name__}: {exc}"
            ours = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
            where = "".join(traceback.format_list(ours[-2:]))  # which step of the benchmark
            print(f"{case}: {result.failure}\n{where}{service.log_tail()}", file=sys.stderr)
        finally:
            try:
                if clients.processes:
                    result.receipts, result.errors = clients.collect(timeout=15)
            finally:
                clients.stop()
                service.stop()
    return result


# --- statistics and the report ------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def latencies(run: RunResult, *, decoded: bool = False) -> list[float]:
    """Receipt (or decoded) time minus that round's t0, for every workload of every round."""
    t0 = {r.version: r.t0 for r in run.rounds}
    return [
        (rec.decoded if decoded else rec.received) - t0[rec.version]
        for rec in run.receipts
        if rec.version in t0
    ]


def ms(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"


def spread(values: Sequence[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    return " / ".join(ms(percentile(values, p)) for p in (50, 99, 100))


def mid_max(values: Sequence[float]) -> str:
    """median / max in milliseconds."""
    if not values:
        return "n/a"
    return f"{ms(statistics.median(values))} / {ms(max(values))}"


def change_bytes(run: RunResult) -> str:
    """What one watcher received per change in the rounds: median / max bytes."""
    first = min((r.version for r in run.rounds), default=None)
    sizes = [rec.size for rec in run.receipts if first is not None and rec.version >= first]
    return f"{statistics.median(sizes):,.0f} / {max(sizes):,}" if sizes else "n/a"


def setup_receipts(run: RunResult) -> int:
    """Snapshots delivered before the first round: one each, plus one per registry change seen."""
    first = min((r.version for r in run.rounds), default=None)
    return sum(1 for rec in run.receipts if first is None or rec.version < first)


def mib(run: RunResult, key: str) -> str:
    return f"{run.rss[key] / MiB:.1f}" if key in run.rss else "n/a"


def case_cells(run: RunResult) -> list[str]:
    return [str(run.case.n), run.case.client, run.case.nodelay, run.case.store, run.case.snapshots]


# Column titles; a trailing ">" right-aligns the column.
CASE_COLUMNS = ("N>", "client", "nodelay", "store", "snapshots")
LATENCY_COLUMNS = (
    *CASE_COLUMNS,
    "client procs>",
    "rounds>",
    "apply→receive p50 / p99 / max",
    "apply→decoded p50 / p99 / max",
    "apply→last ACK (server)",
    "apply→all ACKed (poller)",
    "receipts>",
)
RESOURCE_COLUMNS = (
    *CASE_COLUMNS,
    "RSS idle>",
    "RSS connected>",
    "RSS peak>",
    "RSS after>",
    "service CPU ms/round>",
    "clients CPU ms/round>",
    "etcd CPU ms/round, RSS>",
    "GET /v1/workloads ms, quiet / summary in rounds>",
    "snapshots sent in setup>",
    "apply ms",
    "snapshot bytes>",
    "bytes per change p50 / max>",
    "compile ms>",
    "setup s>",
    "errors>",
    "other load>",
)


NODELAY_COLUMN = CASE_COLUMNS.index("nodelay")


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(columns: Sequence[str], rows: Sequence[list[str]], *, nodelay: bool) -> list[str]:
    """A Markdown table; without the nodelay column unless some case forced it."""
    if not nodelay:
        columns = [c for i, c in enumerate(columns) if i != NODELAY_COLUMN]
        rows = [[c for i, c in enumerate(r) if i != NODELAY_COLUMN] for r in rows]
    rules = ["---:" if c.endswith(">") else "---" for c in columns]
    head = [row([c.removesuffix(">") for c in columns]), "|" + "|".join(rules) + "|"]
    return head + [row(r) for r in rows]


def latency_cells(run: RunResult) -> list[str]:
    rounds = f"{len(run.rounds)}" + (" (failed)" if run.failure else "")
    received = len(latencies(run))
    cells: list[str] = [
        *case_cells(run),
        str(run.procs),
        rounds,
        spread(latencies(run)),
        spread(latencies(run, decoded=True)),
        mid_max([r.last_ack_server for r in run.rounds]),
        mid_max([r.all_acked_observed for r in run.rounds]),
        f"{received}/{run.case.n * len(run.rounds)}",
    ]
    return cells


def resource_cells(run: RunResult) -> list[str]:
    polls = [p for r in run.rounds for p in r.poll_seconds]
    per_round = len(run.rounds) or 1
    cells: list[str] = [
        *case_cells(run),
        mib(run, "idle"),
        mib(run, "connected"),
        mib(run, "peak"),
        mib(run, "after"),
        f"{sum(r.server_cpu for r in run.rounds) / per_round * 1000:.0f}",
        f"{sum(r.client_cpu for r in run.rounds) / per_round * 1000:.0f}",
        "-"
        if math.isnan(run.etcd_cpu)
        else f"{run.etcd_cpu / per_round * 1000:.0f}, {run.etcd_rss / 2**20:.0f} MiB",
        f"{ms(run.listing_seconds)} / {ms(statistics.mean(polls)) if polls else 'n/a'}",
        str(setup_receipts(run)),
        mid_max([r.apply_seconds for r in run.rounds]),
        f"{run.payload_bytes:,}",
        change_bytes(run),
        ms(run.compile_seconds),
        f"{run.setup_seconds:.1f}",
        str(len(run.errors)),
        "n/a" if math.isnan(run.other_load) else f"{run.other_load:.0%}",
    ]
    return cells


def temp_filesystem() -> str:
    """The file system of the temporary data dirs: SQLite's fsync cost depends on it."""
    where = os.path.realpath(tempfile.gettempdir())
    mounts = [m for m in psutil.disk_partitions(all=True) if where.startswith(m.mountpoint)]
    best = max(mounts, key=lambda m: len(m.mountpoint), default=None)
    return f"data dir in {where} ({best.fstype})" if best is not None else f"data dir in {where}"


def code_under_test() -> str:
    """Where meshlib is imported from, the repository's commit and whether the service differs."""
    spec = importlib.util.find_spec("meshlib")
    where = Path(spec.origin).parent if spec is not None and spec.origin else None
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", SERVICE_SRC],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"meshlib from {where}"
    if where is None or not where.is_relative_to(repo):
        return f"meshlib from `{where}` (not this repository's src/, which is at {commit})"
    state = f" ({SERVICE_SRC} has uncommitted changes)" if dirty else f" ({SERVICE_SRC} clean)"
    return f"meshlib from `{where.relative_to(repo)}` at commit {commit}{state}"


LATENCY_NOTE = """\
Each round applies one changed VirtualService; t0 is taken just before `POST /v1/apply`.
Receive = the workload has read the whole watch response; decoded = it has also handled it
(`compile`: parsed and compiled with `decode_snapshot`). Last ACK (server) = the latest
`lastSeen` the service recorded with the ACKs of the new version; all ACKed (poller) = the
first `GET /v1/workloads?summary=true` counting every ACK. Receive and decoded pool every workload of every
round (p50 / p99 / max, ms); the ACK columns are median / max over rounds (ms).
client: `raw` = minimal asyncio HTTP/1.1 client, `httpx` = one `httpx.AsyncClient` per
workload, as `Watcher` does."""

NODELAY_NOTE = """nodelay: `as-is` = the service unchanged; `forced` = TCP_NODELAY forced on the service's
accepted sockets."""

RESOURCE_NOTE = """\
Config service process: RSS in MiB idle (no workloads), connected (N watches held), peak
during the rounds (sampled every 10 ms) and after the last fan-out; CPU ms per round used by
the service and by all client processes together (until every ACK is counted); time of one
`GET /v1/workloads` (the whole listing, `meshctl status`) on a quiet service (median of 5), and
on average of one `GET /v1/workloads?summary=true` while the driver polled it in the rounds;
snapshots delivered to workloads before the first round (N if registering changes nothing
workloads see; more if each registration makes a new version);
`POST /v1/apply` round trip (median / max, ms); snapshot size; what one watch answer carried
per change in the rounds (a delta with `snapshots` = delta, else the whole snapshot); the CPU
one workload spends parsing and compiling it (`decode_snapshot`, timed in the driver); seconds
for N workloads to start, register and ACK the first snapshot; client-side errors; the share of all cores that
other processes on the machine used during the rounds (the benchmark wants it near 0%)."""


def render(runs: Sequence[RunResult], opts: Options, command: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nodelay = any(r.case.nodelay != "as-is" for r in runs)
    polling = "from t0 (--eager-poll)" if opts.eager_poll else "once the clients report every receipt"
    lines = [
        opts.title,
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, {temp_filesystem()}  ",
        f"Date: {when}; {code_under_test()}  ",
        f"Settings: {opts.rounds} rounds per case, snapshot handling `--decode {opts.decode}`, "
        f"workload endpoints {'on' if opts.endpoints else 'off'}, watch wait {opts.wait:g} s, "
        f"`GET /v1/workloads?summary=true` polled every {opts.poll_interval * 1000:g} ms {polling}, "
        f"pause between rounds {opts.pause:g} s.",
        "",
        LATENCY_NOTE + ("\n" + NODELAY_NOTE if nodelay else ""),
        "",
        *table(LATENCY_COLUMNS, [latency_cells(r) for r in runs], nodelay=nodelay),
        "",
        RESOURCE_NOTE,
        "",
        *table(RESOURCE_COLUMNS, [resource_cells(r) for r in runs], nodelay=nodelay),
    ]
    problems = [p for r in runs for p in problems_of(r)]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines) + "\n"


def problems_of(run: RunResult) -> list[str]:
    out = []
    if run.failure:
        out.append(f"- {run.case}: {run.failure}")
    if run.errors:
        out.append(f"- {run.case}: {len(run.errors)} client errors, first: `{run.errors[0]}`")
    if run.other_load > BUSY_MACHINE:
        out.append(
            f"- {run.case}: other processes used {run.other_load:.0%} of the cores during the "
            "rounds; its figures are pessimistic"
        )
    return out


# --- main ---------------------------------------------------------------------------------


def command_line() -> str:
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    with contextlib.suppress(ValueError):
        argv[0] = os.path.relpath(argv[0])
    return shlex.join(argv)


def on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks that stop our processes


def cases(opts: Options) -> list[Case]:
    return [
        Case(n, c, d, store, snap)
        for snap in opts.snapshots
        for store in opts.stores
        for c in opts.clients
        for d in opts.nodelay
        for n in opts.workloads
    ]


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    command = command_line()
    runs: list[RunResult] = []
    for case in cases(opts):
        print(f"{case}: running", flush=True)
        runs.append(run_case(case, opts))
        print(row(latency_cells(runs[-1])), flush=True)
    section = render(runs, opts, command)
    print("\n" + section)
    if opts.results is not None:
        write_results(opts.results, section)
        print(f"wrote {opts.results}")
    return 1 if any(r.failure for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
