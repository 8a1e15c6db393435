"""Helpers of the control-plane scenarios: ``meshctl serve`` as a process that can be killed
with SIGKILL and started again on its port and data, workloads as processes
(``_workload.py``), meshctl runs, and mesh traffic at a fixed rate on a thread."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from meshlib import Mesh
from meshlib.controlplane.client import ControlPlaneClient
from tests.servers import free_port, wait_for
from tests.test_mtls import stop

WORKLOAD = Path(__file__).with_name("_workload.py")
REVIEWS = "reviews.default.svc.cluster.local"
FRONTEND_ID = "spiffe://cluster.local/ns/default/sa/frontend"
# meshctl with every logger at DEBUG on stderr (meshctl's own basicConfig is then a no-op).
MESHCTL = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
    "from meshlib.cli.main import main; sys.exit(main(sys.argv[1:]))"
)
# meshctl serve runs uvicorn at log_level="warning": this raises uvicorn's own loggers (each
# connection, each request line) to DEBUG once uvicorn has set them.
UVICORN_DEBUG = (
    "import logging, uvicorn; configure = uvicorn.Config.configure_logging; "
    "uvicorn.Config.configure_logging = lambda self: [configure(self)] and [logging.getLogger(n)"
    ".setLevel(logging.DEBUG) for n in ('uvicorn.error', 'uvicorn.access')] and None; "
)
STRICT = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default", "namespace": "istio-system"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


class ConfigProcess:
    """``meshctl serve`` in its own process (meshlib at DEBUG; uvicorn too if ``uvicorn_debug``),
    on one port across restarts."""

    def __init__(self, data_dir: Path, *options: str, uvicorn_debug: bool = False) -> None:
        self.data_dir = data_dir
        self.options = options
        self.code = UVICORN_DEBUG + MESHCTL if uvicorn_debug else MESHCTL
        self.port = free_port()
        scheme = "https" if "--tls" in options else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen[str] | None = None

    @property
    def ca_file(self) -> str | None:
        """The bundle clients verify the service by, under ``--tls``."""
        return str(self.data_dir / "tls" / "ca-bundle.pem") if "--tls" in self.options else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        ca_file = self.ca_file
        return ssl.create_default_context(cafile=ca_file) if ca_file is not None else True

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 30.0) -> ConfigProcess:
        """Start it and wait until it answers."""
        command = [sys.executable, "-c", self.code, "-v", "serve", "--data-dir", str(self.data_dir)]
        command += ["--port", str(self.port), *self.options]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
        if not wait_for(self._answers, timeout):
            raise AssertionError(f"{self.url} did not start:\n{self.log}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log
        if self.ca_file is not None and not Path(self.ca_file).exists():
            return False  # written once the service has made its TLS certificate
        try:
            return httpx.get(f"{self.url}/v1/healthz", timeout=1.0, verify=self.verify).status_code == 200
        except httpx.HTTPError:
            return False

    def admin(self) -> ControlPlaneClient:
        return ControlPlaneClient(self.url, self.admin_token, verify=self.verify)

    def kill(self) -> None:
        """SIGKILL: no drain, no flush, the watches cut mid-poll."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)  # SIGTERM, SIGKILL after 15 s


class WorkloadProcess:
    """A ``_workload.py`` process: ``service`` serving over mTLS, watching ``url``."""

    def __init__(
        self,
        service: str,
        url: str,
        token: str,
        data_dir: Path,
        *,
        labels: str = "",
        ttl: float | None = None,
        ca_file: str | None = None,
        pythonpath: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.env = {
            **os.environ,
            "MESH_SERVICE": service,
            "MESH_LABELS": labels,
            "MESH_CONTROL_PLANE": url,
            "MESH_TOKEN": token,
            "MESH_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
        if ttl is not None:
            self.env["CERT_TTL"] = str(ttl)
        if ca_file is not None:
            self.env["MESH_CONTROL_PLANE_CA"] = ca_file
        if pythonpath is not None:  # another meshlib than the installed one
            self.env["PYTHONPATH"] = str(pythonpath)
        self.process: subprocess.Popen[str] | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> WorkloadProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKLOAD)], env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)  # SIGTERM, SIGKILL after 15 s


def meshctl(
    *argv: str, server: str, token: str | None = None, ca_file: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``meshctl --server SERVER ARGV...`` as a process, every logger at DEBUG on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_")}
    if token is not None:
        env["MESHCTL_TOKEN"] = token
    options = ["--ca-file", ca_file] if ca_file else []
    command = [sys.executable, "-c", MESHCTL, "--server", server, *options, *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def synced(admin: ControlPlaneClient, count: int, at_least: int = 0) -> bool:
    """``count`` workloads registered, none lost, each ACKed the service's current version
    (at least ``at_least``) and none NACKing."""
    data = admin.workloads()
    items = data["items"]
    return (
        len(items) == count
        and data["version"] >= at_least
        and all(
            w["ackedVersion"] == data["version"] and w["nackVersion"] is None and not w["lost"] for w in items
        )
    )


def status_rows(output: str) -> dict[str, str]:
    """``meshctl status`` table rows by workload id (the third column)."""
    rows = {}
    for line in output.splitlines()[1:]:
        if not line.strip():
            break  # the table ends; "config service version N" follows
        rows[line.split()[2]] = line
    return rows


Check = Callable[[dict[str, Any]], str | None]


def answered_by_reviews(body: dict[str, Any]) -> str | None:
    """The default check: reviews answered, and saw the frontend's verified identity."""
    if body.get("service") != "reviews" or body.get("peer") != FRONTEND_ID:
        return f"unexpected answer {body}"
    return None


class Traffic:
    """GET ``url`` through ``mesh`` at ``rate`` per second on a thread until stopped: at most
    ``limit`` requests, each bounded by ``timeout``. ``outcomes`` holds (time sent, "ok" or
    what went wrong) and ``bodies`` each JSON answer; ``close`` opens a connection (a TLS
    handshake) per request."""

    def __init__(
        self,
        mesh: Mesh,
        url: str,
        rate: float,
        limit: int,
        *,
        check: Check = answered_by_reviews,
        close: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.mesh, self.url, self.rate, self.limit = mesh, url, rate, limit
        self.check = check
        self.headers = {"connection": "close"} if close else {}
        self.timeout = timeout
        self.outcomes: list[tuple[float, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reliability-traffic", daemon=True)

    def _run(self) -> None:
        with self.mesh.http_client(timeout=self.timeout) as client:
            started = time.monotonic()
            for i in range(self.limit):
                if self._done.is_set():
                    return
                sent = time.monotonic()
                try:
                    response = client.get(self.url, headers=self.headers)
                    body = response.json() if response.status_code == 200 else {}
                    problem = (
                        f"HTTP {response.status_code}" if response.status_code != 200 else self.check(body)
                    )
                    if problem is None:
                        self.bodies.append(body)
                except (httpx.HTTPError, ValueError) as exc:
                    problem = repr(exc)
                self.outcomes.append((sent, problem or "ok"))
                self._done.wait(max(0.0, started + (i + 1) / self.rate - time.monotonic()))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(self.timeout + 5)

    def finished(self, timeout: float) -> bool:
        """Wait until all ``limit`` requests are sent; False if that took longer than ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def failures(self) -> list[str]:
        return [f"{sent:.2f}: {what}" for sent, what in self.outcomes if what != "ok"]

    def ok(self) -> int:
        return sum(1 for _, what in self.outcomes if what == "ok")

    def sent_between(self, start: float, end: float) -> int:
        return sum(1 for sent, _ in self.outcomes if start <= sent < end)


def readiness(mesh: Mesh, host: str = "reviews") -> dict[str, Any]:
    """The readiness report of ``host``'s workload, asked over the mesh (mTLS)."""
    with mesh.http_client(timeout=10.0) as client:
        response = client.get(f"http://{host}/.well-known/meshlib/ready")
    report: dict[str, Any] = json.loads(response.text)
    report["status"] = response.status_code
    return report
