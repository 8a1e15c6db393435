"""``meshctl demo``: the order app (examples/order-app) on an embedded mesh, under real traffic.

ingress (this process) → frontend (FastAPI) → orders v1/v2 (Flask) → inventory ×2 (gRPC),
every hop mutual TLS with SPIFFE identities from the embedded config service. The demo
applies the app's Istio YAML, then shows, measured on the traffic it sends:

1. each workload's SPIFFE identity and certificate expiry;
2. the canary of orders v2 moving 90/10 → 50/50 → 0/100, and a test user always on v2;
3. a sick inventory replica (a third of its calls fail) and the retries that absorb it:
   no order fails at the frontend;
4. a call that skips the chain (ingress → inventory) denied, and by which policy;
5. a burst on a rate-limited path: 429s with Retry-After;
6. one request's trace across the three services;
7. the config service stopped: traffic carries on from each workload's snapshot; started
   again, every workload resumes its watch.

It ends by itself, stops every process it started (also on Ctrl-C or an error) and exits 0;
``--keep`` leaves the mesh running until Ctrl-C. Live tables on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import copy
import logging
import math
import secrets
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from .._files import write_secret
from ..errors import MeshError
from ..policy.loader import load_paths
from .demo_mesh import APP_SERVICES, DemoMesh, find_app, interrupted_as_exit

__all__ = ["CanaryStep", "DemoReport", "run_demo"]

CANARY = ((90, 10), (50, 50), (0, 100))
ORDER_URL = "http://frontend/order/book"


@dataclass
class CanaryStep:
    weights: tuple[int, int]
    sent: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    failed: int = 0

    def share(self, version: str) -> float:
        return self.versions[version] / self.sent if self.sent else 0.0

    def within_tolerance(self) -> bool:
        """Each version's share within 5 standard deviations of its weight (the split is
        random per request, as Envoy's): wrong by chance about once in two million runs."""
        for version, weight in zip(("v1", "v2"), self.weights, strict=True):
            p = weight / 100
            sigma = math.sqrt(p * (1 - p) / self.sent) if self.sent else 0.0
            if abs(self.share(version) - p) > 5 * sigma + 1e-9:
                return False
        return True


@dataclass
class DemoReport:
    """What the demo measured; the test of the demo checks it is true."""

    identities: list[tuple[str, str, str, str]] = field(default_factory=list)
    steps: list[CanaryStep] = field(default_factory=list)
    tester: Counter[str] = field(default_factory=Counter)
    failed: int = 0  # orders that failed at the frontend, in every phase
    sent: int = 0
    faults: int = 0  # calls the sick inventory replica failed
    retries: int = 0  # retries orders made towards inventory
    denied_status: str = ""
    denied_policy: str = ""
    quotes: Counter[int] = field(default_factory=Counter)
    limited_by: str = ""
    trace_id: str = ""
    trace_services: set[str] = field(default_factory=set)
    outage_sent: int = 0
    outage_failed: int = 0
    outage_source: str = ""
    resumed: bool = False


class _Traffic:
    """Orders sent through the ingress workload's mesh client, ``workers`` at a time."""

    def __init__(self, client: httpx.Client, report: DemoReport, workers: int = 8) -> None:
        self.client = client
        self.report = report
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="demo-traffic")
        self.lock = threading.Lock()

    def send(
        self,
        count: int,
        on_answer: Callable[[int, str], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        def one(_: int) -> None:
            version = ""
            try:
                answer = self.client.get(ORDER_URL, headers=headers)
                status = answer.status_code
                if status == 200:
                    version = str(answer.json()["orders"]["version"])
            except httpx.HTTPError:
                status = 0
            with self.lock:
                self.report.sent += 1
                if status != 200:
                    self.report.failed += 1
                on_answer(status, version)

        list(self.pool.map(one, range(count)))

    def close(self) -> None:
        self.pool.shutdown()


def run_demo(keep: bool = False, quick: bool = False, console: Console | None = None) -> DemoReport:
    """Run the demo (see the module docstring); ``quick`` sends fewer requests (the tests)."""
    out = console or Console(highlight=False)
    if not out.is_terminal:
        out.width = 120  # plain lines: no wrapping at 80 columns in a log or a pipe
    quiet = logging.getLogger("meshlib")  # the ingress's own warnings (the outage) would cut the tables
    level, quiet.level = quiet.level, logging.ERROR
    per_step = 200 if quick else 400
    report = DemoReport()
    app = find_app()
    out.print("[bold]meshlib demo[/] — an in-process service mesh, configured with Istio YAML\n")
    with interrupted_as_exit(), DemoMesh(app, keep_dir=keep) as mesh:
        server = mesh.start_config_service()
        out.print(f"[bold]1. Config service[/] (embedded, also the CA) on {server.url}")
        results = mesh.apply_folder()
        out.print(f"   applied {len(results)} resources from {app / 'policy'}")
        with out.status("starting frontend, orders v1 and v2, inventory ×2 …"):
            for workload in APP_SERVICES:
                mesh.start_workload(workload)
            ingress = mesh.start_ingress()
            mesh.wait_until_serving(APP_SERVICES, ingress.version, timeout=60)
        _identities(mesh, report, out)
        client = ingress.http_client(timeout=10)
        traffic = _Traffic(client, report)
        try:
            _canary(mesh, traffic, report, out, per_step)
            _faults(mesh, report, out)
            _denial(mesh, report, out)
            _rate_limit(client, mesh, report, out)
            _trace(client, mesh, report, out)
            _outage(mesh, traffic, report, out, per_step // 2)
            _summary(report, out)
            if keep:
                _kept(mesh, out)
        finally:
            traffic.close()
            client.close()
    quiet.setLevel(level)
    out.print(f"\nStopped the {len(APP_SERVICES)} processes and the config service; nothing is left running.")
    return report


def _identities(mesh: DemoMesh, report: DemoReport, out: Console) -> None:
    assert mesh.admin is not None
    table = Table("service", "labels", "SPIFFE identity (proved by its certificate)", "certificate expires")
    for item in sorted(mesh.admin.workloads()["items"], key=lambda i: i["registration"]["service"]):
        registration = item["registration"]
        labels = registration.get("labels", {})
        expires = registration.get("certificate_expires") or registration.get("certificateExpires") or "-"
        row = (
            registration["service"],
            ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "app") or "-",
            item.get("identity") or "-",
            expires.replace("T", " ")[:16],
        )
        report.identities.append(row)
        table.add_row(*row)
    out.print(
        "\n[bold]2. Workloads[/], each a process with its own identity; every hop is mutual TLS (STRICT)"
    )
    out.print(table)


def _canary_manifests(mesh: DemoMesh, weights: tuple[int, int]) -> list[dict[str, Any]]:
    manifests = [item.resource.manifest() for item in load_paths([mesh.app / "policy" / "orders.yaml"])]
    changed = copy.deepcopy(manifests)
    for manifest in changed:
        if manifest["kind"] == "VirtualService":
            for route in manifest["spec"]["http"]:
                if route.get("name") == "canary":
                    for destination, weight in zip(route["route"], weights, strict=True):
                        destination["weight"] = weight
    return changed


def _canary(mesh: DemoMesh, traffic: _Traffic, report: DemoReport, out: Console, per_step: int) -> None:
    out.print("\n[bold]3. Canary of orders v2[/] (VirtualService weights), measured on real orders")

    def render() -> Table:
        shown = Table("step", "orders sent", "to v1", "to v2", "failed", "as configured")
        for step in report.steps:
            ok = "✓" if step.sent >= per_step and step.within_tolerance() else ""
            shown.add_row(
                f"{step.weights[0]}/{step.weights[1]}",
                str(step.sent),
                f"{step.share('v1'):.0%}",
                f"{step.share('v2'):.0%}",
                str(step.failed),
                ok,
            )
        return shown

    with Live(render(), console=out, refresh_per_second=8, transient=False) as live:
        for weights in CANARY:
            version = mesh.apply(_canary_manifests(mesh, weights))
            mesh.wait_for_ack("frontend", version)
            step = CanaryStep(weights)
            report.steps.append(step)

            def counted(status: int, served: str, step: CanaryStep = step) -> None:
                step.sent += 1
                if status == 200:
                    step.versions[served] += 1
                else:
                    step.failed += 1
                if step.sent % 20 == 0:
                    live.update(render())

            traffic.send(per_step, counted)
            live.update(render())
    if not out.is_terminal:
        out.print()  # Live's last frame ends without one

    def tester(status: int, served: str) -> None:
        report.tester[served if status == 200 else f"failed ({status})"] += 1

    traffic.send(20, tester, headers={"end-user": "tester"})
    spread = ", ".join(f"{n} to {v}" for v, n in sorted(report.tester.items()))
    out.print(f"   [italic]end-user: tester[/] (route test-user): 20 orders, {spread}")


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> int:
    return int(
        sum(
            value
            for sample, got, value in samples
            if sample == name and all(got.get(k) == v for k, v in labels.items())
        )
    )


def _faults(mesh: DemoMesh, report: DemoReport, out: Console) -> None:
    sick = mesh.metrics("inventory-2")
    report.faults = _sum(sick, "istio_requests_total", reporter="destination", grpc_response_status="14")
    report.retries = _sum(
        mesh.metrics("orders-v1") + mesh.metrics("orders-v2"), "meshlib_events_total", kind="retries"
    )
    out.print("\n[bold]4. A sick replica[/]: inventory-2 fails a third of its calls (UNAVAILABLE)")
    out.print(
        f"   inventory-2 failed {report.faults} calls; orders retried {report.retries} times, each on "
        f"the other replica\n   (policy/inventory.yaml: retryOn unavailable)\n"
        f"   orders that failed at the frontend: [bold]{report.failed}[/] of {report.sent}"
    )


def _denial(mesh: DemoMesh, report: DemoReport, out: Console) -> None:
    import grpc

    from ..grpc import channel

    assert mesh.ingress is not None
    check = channel(mesh.ingress, "inventory").unary_unary("/inventory.Inventory/Check")
    try:
        check(b"book", timeout=5)
        report.denied_status = "OK"
    except grpc.RpcError as exc:
        report.denied_status = exc.code().name
    denials = [
        labels.get("policy", "")
        for name in ("inventory-1", "inventory-2")
        for sample, labels, value in mesh.metrics(name)
        if sample == "meshlib_authorization_denials_total" and value > 0
    ]
    policy = denials[0] if denials else "?"
    report.denied_policy = policy
    out.print("\n[bold]5. Authorization[/]: ingress calls inventory directly, skipping frontend and orders")
    if policy in ("", "none"):  # what the metric says when ALLOW policies exist and none matched
        reason = "no ALLOW policy matched: inventory accepts only orders (default/inventory-from-orders)"
    else:
        reason = f"denied by {policy}"
    out.print(f"   answer: [bold]{report.denied_status}[/] — {reason}")


def _rate_limit(client: httpx.Client, mesh: DemoMesh, report: DemoReport, out: Console) -> None:
    retry_after = ""
    for _ in range(12):
        answer = client.get("http://frontend/quote")
        report.quotes[answer.status_code] += 1
        retry_after = answer.headers.get("retry-after", retry_after)
    limited = [
        labels.get("policy", "")
        for sample, labels, value in mesh.metrics("frontend")
        if sample == "meshlib_rate_limited_total" and value > 0
    ]
    report.limited_by = limited[0] if limited else ""
    out.print("\n[bold]6. Rate limit[/]: 12 quotes at once (policy/rate-limit.yaml: 5 per second per caller)")
    out.print(
        f"   {report.quotes[200]} answered 200, {report.quotes[429]} answered 429 "
        f"(Retry-After: {retry_after or '-'}s) by {report.limited_by or '?'}"
    )


def _trace(client: httpx.Client, mesh: DemoMesh, report: DemoReport, out: Console) -> None:
    """A few orders sampled (a caller with a mesh identity may ask for it); the trace shown is
    one with a retry when the sick replica failed one of them, else the longest."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    sent: list[tuple[str, str]] = []
    traces: list[tuple[list[dict[str, Any]], str, str]] = []
    for _ in range(12):  # a few: most likely one meets the sick replica, and its trace shows a retry
        trace_id, span_id = secrets.randbits(128) or 1, secrets.randbits(64) or 1
        parent = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        with trace.use_span(NonRecordingSpan(parent)):  # sampled: the mesh traces it in every process
            client.get(ORDER_URL)
        sent.append((f"{trace_id:032x}", f"{span_id:016x}"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        traces = [(mesh.spans(trace_id), trace_id, root) for trace_id, root in sent]
        if all({"frontend", "orders", "inventory"} <= _services(spans) for spans, _, _ in traces):
            break
        time.sleep(0.2)
    spans, report.trace_id, root = max(
        traces, key=lambda t: (any("attempt 2" in s.get("name", "") for s in t[0]), len(t[0]))
    )
    report.trace_services = _services(spans)
    out.print(f"\n[bold]7. One order's trace[/] (trace id {report.trace_id}), as each process exported it")
    out.print(_trace_tree(spans, root))


def _services(spans: list[dict[str, Any]]) -> set[str]:
    return {str(s.get("resource", {}).get("attributes", {}).get("service.name", "?")) for s in spans}


def _trace_tree(spans: list[dict[str, Any]], root_parent: str) -> Tree:
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        children.setdefault((span.get("parent_id") or "").removeprefix("0x"), []).append(span)
    tree = Tree(f"ingress (this process)  span {root_parent}")

    def grow(node: Tree, parent: str) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["start_time"]):
            kind = span["kind"].removeprefix("SpanKind.").lower()
            attributes = span.get("attributes", {})
            status = attributes.get("http.status_code") or attributes.get("http.response.status_code") or ""
            label = f"{span['workload']:<12} {kind:<8} {span['name']}  {_duration(span)}  {status}"
            grow(node.add(label), span["context"]["span_id"].removeprefix("0x"))

    grow(tree, root_parent)
    return tree


def _duration(span: dict[str, Any]) -> str:
    from datetime import datetime

    try:
        started = datetime.fromisoformat(span["start_time"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(span["end_time"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return ""
    return f"{(ended - started).total_seconds() * 1000:.1f} ms"


def _outage(mesh: DemoMesh, traffic: _Traffic, report: DemoReport, out: Console, count: int) -> None:
    assert mesh.ingress is not None
    out.print("\n[bold]8. The config service stops[/]; traffic carries on from each workload's snapshot")
    mesh.stop_config_service()
    time.sleep(0.5)  # long enough for every watch to notice
    failed_before = report.failed

    def counted(status: int, _: str) -> None:
        report.outage_sent += 1

    traffic.send(count, counted)
    report.outage_failed = report.failed - failed_before
    health = mesh.ingress.health()
    report.outage_source = (
        f"version {health['version']} from {health['source']}, connected: {health['connected']}"
    )
    connected = "yes" if health["connected"] else "no"
    out.print(
        f"   {report.outage_sent} orders, {report.outage_failed} failed; the ingress workload keeps serving "
        f"version {health['version']}, connected to the config service: {connected}"
    )
    mesh.start_config_service()
    report.resumed = _wait(lambda: _all_watching(mesh), 15)
    out.print(f"   started again: every workload resumed its watch: {'yes' if report.resumed else 'NO'}")


def _all_watching(mesh: DemoMesh) -> bool:
    assert mesh.admin is not None
    items = mesh.admin.workloads()["items"]
    return len(items) >= len(APP_SERVICES) + 1 and all(i.get("connected") for i in items)


def _wait(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (httpx.HTTPError, MeshError):
            pass
        time.sleep(0.1)
    return False


def _summary(report: DemoReport, out: Console) -> None:
    good = all(s.within_tolerance() for s in report.steps) and report.failed == 0
    out.print(
        f"\n[bold]{'All as configured' if good else 'Something was off'}[/]: {report.sent} orders through "
        f"three services and two protocols, {report.failed} failed."
    )


def _kept(mesh: DemoMesh, out: Console) -> None:
    assert mesh.server is not None
    admin = mesh.work / "config-service" / "admin.token"
    ingress = mesh.work / "ingress.token"
    write_secret(ingress, mesh.token("ingress"))  # 0600, as every token the mesh writes
    call = mesh.app / "call.py"
    out.print(f"\n[bold]--keep[/]: the mesh keeps running (its files are in {mesh.work}).", soft_wrap=True)
    out.print(  # soft_wrap: commands are copied as printed, never cut at the terminal's width
        "In another terminal:\n"
        f'  export MESHCTL_SERVER={mesh.server.url} MESHCTL_TOKEN="$(cat {admin})"\n'
        "  meshctl status                # every workload, its version, identity and certificate\n"
        "  meshctl top                   # who calls whom, live\n"
        f"  meshctl apply -f {mesh.app / 'policy'}   # after editing the YAML (e.g. the canary's weights)\n"
        f'  MESH_SERVICE=ingress MESH_CONTROL_PLANE={mesh.server.url} MESH_TOKEN="$(cat {ingress})" \\\n'
        f"    {sys.executable} {call}   # two orders, as the ingress workload\n"
        "Ctrl-C here stops everything.",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    try:
        while True:
            mesh.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        pass
