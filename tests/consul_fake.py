"""A stand-in for a Consul agent's health API, for tests: no Consul server installs here.

A real HTTP server on 127.0.0.1 that answers ``GET /v1/health/service/<name>`` as Consul's API
documentation describes it (api-docs/health "List Service Instances for Service", and
api-docs/features/blocking "Blocking Queries"):

- ``passing``: only instances whose node and service checks are all ``passing`` (a ``warning``
  or ``critical`` check leaves it out); ``tag`` (repeatable: every tag must be present); ``dc``
  (another datacenter this agent knows; an unknown one is ``500 No path to datacenter``);
- ``index`` + ``wait``: a query with an index below the service's current index is answered at
  once; otherwise it is held until the service changes or ``wait`` (a Go duration, 5m by
  default, at most 10m) plus up to wait/16 of jitter has passed, then answered as it is then;
- headers ``X-Consul-Index`` (the raft index of the last write that touched the service),
  ``X-Consul-KnownLeader``, ``X-Consul-LastContact``; the JSON body is a list of
  ``{"Node", "Service", "Checks"}`` objects with Consul's field names;
- ACLs: with ``token`` set, a request without that token (``X-Consul-Token`` header or
  ``token`` query parameter) is ``403 ACL not found``.

Tests change it while it runs (register, deregister, check status, outage) and read the
queries it answered (``queries``) to see how a client blocked.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MAX_WAIT = 600.0


def go_duration(text: str) -> float:
    parts = re.findall(r"([\d.]+)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass
class Instance:
    service: str
    id: str
    address: str
    port: int
    node: str
    node_address: str
    datacenter: str
    tags: list[str]
    meta: dict[str, str]
    weights: dict[str, int]
    status: str  # the service check
    create_index: int
    modify_index: int


@dataclass
class Query:
    """One health query as the fake answered it."""

    service: str
    index: int | None
    wait: float | None
    started: float
    answered: float
    returned_index: int
    status: int


@dataclass
class FakeConsul:
    datacenter: str = "dc1"
    other_datacenters: tuple[str, ...] = ()
    token: str | None = None
    queries: list[Query] = field(default_factory=list)
    seen_tokens: list[str | None] = field(default_factory=list)
    received: int = 0  # health queries received (``queries`` has those answered)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._index = 10
        self._instances: dict[str, Instance] = {}
        self._service_index: dict[str, int] = {}
        self._node_status: dict[str, str] = {}
        self._leader = True
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- running ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeConsul:
        """Listen on a free port of 127.0.0.1 (the same one again after ``stop``)."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._stopping = False
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """An outage: the port is closed, held queries are dropped without an answer."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> FakeConsul:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests change -----------------------------------------------------------

    def _write(self, *services: str) -> int:
        """A raft write touching ``services``: the index moves, blocked queries wake."""
        self._index += 1
        for service in services:
            self._service_index[service] = self._index
        self._lock.notify_all()
        return self._index

    def register(
        self,
        service: str,
        id: str,
        address: str,
        port: int,
        *,
        node: str = "node-1",
        node_address: str = "127.0.0.1",
        tags: list[str] | None = None,
        meta: dict[str, str] | None = None,
        weights: dict[str, int] | None = None,
        status: str = "passing",
        datacenter: str | None = None,
    ) -> None:
        with self._lock:
            old = self._instances.get(id)
            index = self._write(service, *([old.service] if old else []))
            self._instances[id] = Instance(
                service,
                id,
                address,
                port,
                node,
                node_address,
                datacenter or self.datacenter,
                list(tags or []),
                dict(meta or {}),
                dict(weights or {"Passing": 1, "Warning": 1}),
                status,
                old.create_index if old else index,
                index,
            )
            self._node_status.setdefault(node, "passing")

    def deregister(self, id: str) -> None:
        with self._lock:
            old = self._instances.pop(id)
            self._write(old.service)

    def set_status(self, id: str, status: str) -> None:
        """The instance's service check turns ``passing``, ``warning`` or ``critical``."""
        with self._lock:
            instance = self._instances[id]
            instance.status = status
            instance.modify_index = self._write(instance.service)

    def touch(self, service: str) -> None:
        """A write that moves the index and changes nothing a client sees (Consul has those:
        a check's output changes, an idempotent re-registration)."""
        with self._lock:
            self._write(service)

    def set_leader(self, known: bool) -> None:
        with self._lock:
            self._leader = known

    def service_index(self, service: str) -> int:
        with self._lock:
            return self._service_index.get(service, 1)

    # --- the API -----------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        parts = urlsplit(request.path)
        params = parse_qs(parts.query, keep_blank_values=True)
        token = request.headers.get("X-Consul-Token") or (params.get("token") or [None])[0]
        self.seen_tokens.append(token)
        with self._lock:
            self.received += 1
        prefix = "/v1/health/service/"
        if not parts.path.startswith(prefix):
            return self._reply(request, 404, b"404 page not found", {}, content_type="text/plain")
        service = unquote(parts.path[len(prefix) :])
        if self.token is not None and token != self.token:
            return self._reply(request, 403, b"ACL not found", {}, content_type="text/plain")
        datacenter = (params.get("dc") or [self.datacenter])[0] or self.datacenter
        if datacenter not in (self.datacenter, *self.other_datacenters):
            return self._reply(request, 500, b"No path to datacenter", {}, content_type="text/plain")
        try:
            index = int(params["index"][0]) if "index" in params else None
            wait = go_duration(params["wait"][0]) if "wait" in params else None
        except ValueError as exc:
            return self._reply(request, 400, str(exc).encode(), {}, content_type="text/plain")
        with self._lock:
            if index:  # blocking: hold while nothing newer than ``index`` happened
                hold = min(wait if wait is not None else 300.0, _MAX_WAIT)
                deadline = started + hold + random.uniform(0, hold / 16)
                while self._service_index.get(service, 1) <= index and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                if self._stopping:
                    request.close_connection = True
                    return None
            current = self._service_index.get(service, 1)
            body = self._body(service, datacenter, params)
            leader = self._leader
        self.queries.append(Query(service, index, wait, started, time.monotonic(), current, 200))
        headers = {
            "X-Consul-Index": str(current),
            "X-Consul-KnownLeader": "true" if leader else "false",
            "X-Consul-LastContact": "0",
            "X-Consul-Effective-Consistency": "leader",
        }
        return self._reply(request, 200, json.dumps(body).encode(), headers)

    def _body(self, service: str, datacenter: str, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        passing = "passing" in params and params["passing"][0].lower() not in ("false", "0")
        tags = params.get("tag", [])
        out = []
        for item in sorted(self._instances.values(), key=lambda i: (i.node, i.id)):
            if item.service != service or item.datacenter != datacenter:
                continue
            if not all(tag in item.tags for tag in tags):
                continue
            node_status = self._node_status.get(item.node, "passing")
            if passing and (item.status != "passing" or node_status != "passing"):
                continue
            out.append(self._entry(item, node_status))
        return out

    @staticmethod
    def _entry(item: Instance, node_status: str) -> dict[str, Any]:
        node_check = {
            "Node": item.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": node_status,
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "CreateIndex": item.create_index,
            "ModifyIndex": item.create_index,
        }
        service_check = {
            **node_check,
            "CheckID": f"service:{item.id}",
            "Name": f"Service '{item.service}' check",
            "Status": item.status,
            "Output": f"HTTP GET: {item.status}",
            "ServiceID": item.id,
            "ServiceName": item.service,
            "ServiceTags": list(item.tags),
            "Type": "http",
            "ModifyIndex": item.modify_index,
        }
        return {
            "Node": {
                "ID": f"00000000-0000-0000-0000-{sum(map(ord, item.node)):012d}",
                "Node": item.node,
                "Address": item.node_address,
                "Datacenter": item.datacenter,
                "TaggedAddresses": {"lan": item.node_address, "wan": item.node_address},
                "Meta": {"consul-network-segment": ""},
                "CreateIndex": item.create_index,
                "ModifyIndex": item.create_index,
            },
            "Service": {
                "ID": item.id,
                "Service": item.service,
                "Tags": list(item.tags),
                "Address": item.address,
                "TaggedAddresses": {},
                "Meta": dict(item.meta),
                "Port": item.port,
                "Weights": dict(item.weights),
                "EnableTagOverride": False,
                "Proxy": {"MeshGateway": {}, "Expose": {}},
                "Connect": {},
                "CreateIndex": item.create_index,
                "ModifyIndex": item.modify_index,
            },
            "Checks": [node_check, service_check],
        }

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str],
        content_type: str = "application/json",
    ) -> None:
        request.send_response(status)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)
