"""The mesh ``meshctl demo`` runs: a config service, the order app's processes, and the
``ingress`` workload (this process) that sends them traffic.

Everything lives in one temporary folder and on free ports of 127.0.0.1; ``DemoMesh`` is a
context manager that stops every process it started (SIGTERM, then SIGKILL after a few
seconds), on success, on an error and on Ctrl-C alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .._net import free_port
from ..controlplane.client import ControlPlaneClient
from ..controlplane.server import ConfigServer
from ..errors import MeshError
from ..mesh import Mesh
from ..policy.loader import load_paths

__all__ = ["APP_SERVICES", "DemoMesh", "Workload", "find_app"]


@dataclass(frozen=True)
class Workload:
    """One process of the app: ``name`` is how the demo calls it (``orders-v2``)."""

    name: str
    service: str
    script: str
    env: dict[str, str] = field(default_factory=dict)


APP_SERVICES = (
    Workload("inventory-1", "inventory", "inventory.py", {"INVENTORY_REPLICA": "inventory-1"}),
    # The sick replica: a third of its calls fail, and retries on the other replica absorb them.
    Workload(
        "inventory-2",
        "inventory",
        "inventory.py",
        {"INVENTORY_REPLICA": "inventory-2", "INVENTORY_FAILURE_RATE": "0.3"},
    ),
    Workload("orders-v1", "orders", "orders.py", {"ORDERS_VERSION": "v1"}),
    Workload("orders-v2", "orders", "orders.py", {"ORDERS_VERSION": "v2"}),
    Workload("frontend", "frontend", "frontend.py"),
)


def find_app() -> Path:
    """``examples/order-app`` of the clone meshlib runs from (``MESHLIB_DEMO_APP`` overrides)."""
    override = os.environ.get("MESHLIB_DEMO_APP", "").strip()
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parents[3] / "examples" / "order-app")
    for candidate in candidates:
        if (candidate / "frontend.py").is_file():
            return candidate
    raise MeshError(
        "meshctl demo runs the example app in examples/order-app of a meshlib clone, with "
        "meshlib-fastapi, meshlib-flask and meshlib-grpc installed: run scripts/demo from a clone "
        "(or point MESHLIB_DEMO_APP at the folder)"
    )


def _labels(workload: Workload) -> str:
    """``app`` (what the policies select) and, for orders, ``version`` (the canary's subsets)."""
    version = workload.env.get("ORDERS_VERSION")
    return f"app={workload.service}" + (f",version={version}" if version else "")


class DemoMesh:
    """The running mesh; see the module docstring."""

    def __init__(self, app: Path, *, keep_dir: bool = False) -> None:
        self.app = app
        self.work = Path(tempfile.mkdtemp(prefix="meshlib-demo-"))
        self.keep_dir = keep_dir
        self.server: ConfigServer | None = None
        self.admin: ControlPlaneClient | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}
        self.ingress: Mesh | None = None
        self.tokens: dict[str, str] = {}

    # --- set-up ---------------------------------------------------------------------

    def start_config_service(self) -> ConfigServer:
        if self.server is None:
            self.server = ConfigServer(self.work / "config-service")
        self.server.start()  # again after a stop: the same port and data
        if self.admin is None:
            self.admin = ControlPlaneClient(self.server.url, self.server.admin_token)
        return self.server

    def stop_config_service(self) -> None:
        if self.server is not None:
            self.server.stop()

    def apply_folder(self) -> list[dict[str, Any]]:
        """Apply every file of ``policy/``; the results (kind, name, action)."""
        manifests = [item.resource.manifest() for item in load_paths([self.app / "policy"])]
        assert self.admin is not None
        return list(self.admin.apply(manifests)["results"])

    def apply(self, manifests: list[dict[str, Any]]) -> int:
        assert self.admin is not None
        return int(self.admin.apply(manifests)["version"])

    def token(self, service: str) -> str:
        if service not in self.tokens:
            assert self.admin is not None
            self.tokens[service] = self.admin.create_token(service)["token"]
        return self.tokens[service]

    def start_workload(self, workload: Workload) -> None:
        assert self.server is not None
        metrics = free_port()
        env = {
            **os.environ,
            **workload.env,
            "MESH_SERVICE": workload.service,
            "MESH_LABELS": _labels(workload),
            "MESH_CONTROL_PLANE": self.server.url,
            "MESH_TOKEN": self.token(workload.service),  # in the environment, never on a command line
            "MESH_DATA_DIR": str(self.work / workload.name),
            "MESH_METRICS_PORT": str(metrics),
            "MESH_TRACING": "console",  # spans as JSON on stdout: the demo reads one trace there
            "MESH_EDGE_REPORT_INTERVAL": "1",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
        log = (self.work / f"{workload.name}.log").open("wb")
        with log:
            self.processes[workload.name] = subprocess.Popen(  # noqa: S603 - our own scripts
                [sys.executable, str(self.app / workload.script)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches the demo, which stops them
            )
        self.metrics_ports[workload.name] = metrics

    def start_ingress(self) -> Mesh:
        assert self.server is not None
        self.ingress = Mesh(
            "ingress",
            labels={"app": "ingress"},
            control_plane=self.server.url,
            token=self.token("ingress"),
            data_dir=self.work / "ingress",
        ).start()
        return self.ingress

    def wait_until_serving(self, workloads: tuple[Workload, ...], version: int, timeout: float) -> None:
        """Until every workload registered its endpoint and acknowledged ``version``, and the
        ingress sees frontend's endpoint; a process that exits meanwhile is an error with its log."""
        assert self.admin is not None
        assert self.ingress is not None
        deadline = time.monotonic() + timeout
        wanted = {w.service: sum(1 for x in workloads if x.service == w.service) for w in workloads}
        while True:
            self.check_alive()
            items = self.admin.workloads()["items"]
            ready: dict[str, int] = {}
            for item in items:
                registration = item["registration"]
                if registration.get("endpoints") and (item.get("ackedVersion") or 0) >= version:
                    ready[registration["service"]] = ready.get(registration["service"], 0) + 1
            if all(ready.get(s, 0) >= n for s, n in wanted.items()) and self.ingress.snapshot.endpoints(
                "frontend.default.svc.cluster.local"
            ):
                return
            if time.monotonic() > deadline:
                missing = sorted(s for s, n in wanted.items() if ready.get(s, 0) < n)
                raise MeshError(
                    f"the app did not come up in {timeout:.0f}s: waiting for {', '.join(missing)}"
                )
            time.sleep(0.1)

    def wait_for_ack(self, service: str, version: int, timeout: float = 10.0) -> None:
        """Until every workload of ``service`` acknowledged ``version``."""
        assert self.admin is not None
        deadline = time.monotonic() + timeout
        while True:
            items = [i for i in self.admin.workloads()["items"] if i["registration"]["service"] == service]
            if items and all((i.get("ackedVersion") or 0) >= version for i in items):
                return
            if time.monotonic() > deadline:
                raise MeshError(f"{service} did not acknowledge version {version} in {timeout:.0f}s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(name)[-2000:]
                raise MeshError(f"{name} exited with {process.returncode}:\n{tail}")

    # --- reading what the workloads report ----------------------------------------------

    def log(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        """The samples of ``name``'s Prometheus endpoint."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.metrics_ports[name]}/metrics", timeout=5).text
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """The spans of one trace that the app's processes printed (MESH_TRACING=console)."""
        decoder = json.JSONDecoder()
        found = []
        for workload in APP_SERVICES:
            text = self.log(workload.name)
            index = text.find("{")
            while index != -1:
                try:
                    item, end = decoder.raw_decode(text, index)
                except ValueError:
                    index = text.find("{", index + 1)
                    continue
                if isinstance(item, dict) and item.get("context", {}).get("trace_id") == f"0x{trace_id}":
                    found.append({**item, "workload": workload.name})
                index = text.find("{", end)
        return found

    # --- tear-down ------------------------------------------------------------------

    def stop_processes(self, timeout: float = 5.0) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        try:
            if self.ingress is not None:
                self.ingress.close()
            self.stop_processes()
        finally:
            if self.admin is not None:
                self.admin.close()
            self.stop_config_service()
            if not self.keep_dir:
                shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> DemoMesh:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@contextlib.contextmanager
def interrupted_as_exit() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does (the ``finally`` clauses stop the processes)."""

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
