"""``meshlib.Mesh``: one per process; holds the current snapshot and keeps it current."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx

from ._loop import LoopThread
from ._version import __version__
from .control_plane_tls import cleartext_remote, control_plane_verify
from .core.call import Call
from .core.client_stack import default_client_stack
from .core.cluster_state import Clusters
from .core.exchange import Exchange, Reply
from .core.hosts import CLUSTER_DOMAIN, normalize_host
from .core.locality import Locality
from .core.metrics import RequestMetrics
from .core.rate_limit import RateLimiter, compile_rate_limiter
from .core.routing_table import RoutingTable
from .core.server_stack import Answer, Inbound, default_server_stack
from .core.snapshot import Snapshot, WorkloadSecurity, compile_snapshot, telemetry_for
from .core.stack import Flow, Stack
from .dns_refresh import Answers, DnsRefresher, Lookup
from .dns_resolver import DefaultLookup, DnsResolver
from .drivers import AuthorizationProvider
from .errors import ConfigError, ConfigIssue, ControlPlaneError, MeshError
from .http.transport import AsyncMeshTransport, MeshTransport
from .learned_egress import LearnedEgress
from .peer import PeerIdentity
from .policy.discovered_endpoints import refuse_in_files
from .policy.srv_endpoints import srv_lookups_missing
from .registry import AnnouncedEndpoint, WorkloadRegistration
from .settings import MeshSettings, TelemetrySettings
from .telemetry import otel_metrics
from .telemetry.access_log import open_access_log
from .telemetry.hub import Telemetry
from .telemetry.sdk import install_sdk
from .telemetry.tracing import Tracing

if TYPE_CHECKING:
    from .request_authn import JwksCache
    from .watcher import Watcher
    from .workload_identity import WorkloadIdentity

__all__ = ["Mesh", "SnapshotSource"]

_REPORTED = ("draining", "version", "source", "connected", "identity", "certificateExpires")

log = logging.getLogger("meshlib")

MESH_CLIENT_TIMEOUT = httpx.Timeout(None, connect=10.0)  # Istio: no request timeout by default

SnapshotSource = Literal["none", "control-plane", "last-known-good", "static"]
Listener = Callable[[Snapshot], None]


class Mesh:
    """The process's view of the mesh.

    With a config service (``control_plane``) it registers, watches its snapshot,
    acknowledges each version and keeps a last-known-good copy in ``data_dir``;
    when the config service is unreachable at start it runs on that copy. Without
    one it reads ``config`` (a YAML file or folder) and reloads it when it changes.
    """

    def __init__(
        self,
        service: str,
        *,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        control_plane: str | Sequence[str] | None = None,
        control_plane_ca: str | Path | None = None,
        token: str | None = None,
        config: str | Path | None = None,
        data_dir: str | Path | None = None,
        trust_domain: str = CLUSTER_DOMAIN,
        startup_timeout: float = 5.0,
        watch_wait: float = 30.0,
        static_poll_interval: float = 1.0,
        certificate_ttl: float | None = None,
        locality: str = "",
        dns_servers: str | Sequence[str] | None = None,
        egress_hosts: Sequence[str] | None = None,
        learn_egress: bool = False,
        telemetry: TelemetrySettings | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
    ) -> None:
        urls = (control_plane,) if isinstance(control_plane, str) else tuple(control_plane or ())
        self.settings = MeshSettings(
            service=service,
            namespace=namespace,
            labels=dict(labels or {}),
            control_plane=tuple(u.rstrip("/") for u in urls),
            control_plane_ca=Path(control_plane_ca) if control_plane_ca is not None else None,
            token=token,
            config=Path(config) if config is not None else None,
            data_dir=Path(data_dir) if data_dir is not None else None,
            trust_domain=trust_domain,
            locality=locality,
            dns_servers=tuple(_dns_servers(dns_servers)),
            egress_hosts=tuple(egress_hosts or ()),
            learn_egress=learn_egress,
            telemetry=telemetry or TelemetrySettings(),
        )
        self.startup_timeout = startup_timeout
        self._verify = control_plane_verify(self.settings.control_plane_ca)
        self._certificate_ttl = certificate_ttl  # None: the CA's default (24h)
        self._watch_wait = watch_wait
        self._static_poll = static_poll_interval
        self.workload_id = (
            f"{service}.{namespace}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self._snapshot = Snapshot.empty(trust_domain)
        self._source_labels = {"app": service, **self.settings.labels}  # what sourceLabels see
        self._http_plane = RoutingTable.build(self._snapshot, namespace, self._source_labels)
        self._security = self._snapshot.security_for(namespace, self._source_labels, service)
        self._jwks: JwksCache | None = None  # made (with PyJWT) once a RequestAuthentication applies
        self._jwks_uris: dict[str, float] = {}
        self._authenticate: Callable[[Inbound], str | None] | None = None
        self._rate_limiter: RateLimiter | None = None
        self._grpc_plane: RoutingTable | None = None
        # Egress hosts learned from traffic: only with a config service to ask
        self.learned_egress: LearnedEgress | None = (
            LearnedEgress(self.settings.egress_hosts, namespace)
            if learn_egress and self.settings.control_plane
            else None
        )
        self.dns = DnsRefresher(self._dns_changed, _dns_lookup(self.settings))
        """Resolves ServiceEntry resolution DNS names in the background (``dns.lookup``: how)."""
        self.clusters = Clusters(
            time.monotonic, locality=Locality.parse(self.settings.locality), labels=self._source_labels
        )
        self.rng = random.Random()
        observe = self.settings.telemetry
        self.telemetry = Telemetry(
            service,
            namespace,
            self._source_labels,
            lambda: self.identity if self.workload_identity is not None else None,
            tracing=Tracing(
                service,
                namespace,
                sampling=observe.trace_sampling,
                trust_callers=observe.trust_caller_sampling,
                tracer_provider=tracer_provider,
            ),
            access_log=(
                open_access_log(observe.access_log, observe.access_log_sampling)
                if observe.access_log
                else None
            ),
        )
        """Metrics, tracing and the access log of every request through this workload."""
        self.metrics: RequestMetrics = self.telemetry.metrics
        self.metrics_principals: set[str] = set()
        """Mesh peers (SPIFFE IDs) that may scrape ``/.well-known/meshlib/metrics``; callers
        without a mesh identity always may, when the path is served (``MESH_METRICS_PATH``)."""
        self._metrics_registry: Any = None
        self._metrics_server: Any = None
        self._meter_provider = meter_provider
        self._installed_at = 0.0
        self.client_stack = default_client_stack()
        self.server_stack = default_server_stack()
        self.authorization_providers: dict[str, AuthorizationProvider] = {}
        """CUSTOM AuthorizationPolicy providers by name (``provider.name`` in the policy)."""
        self.reveal_denials = False
        """Name the deciding policy in the body of a denial (off: Envoy's generic body)."""
        self.draining = False
        self.workload_identity: WorkloadIdentity | None = None
        self.fqdn = normalize_host(service, namespace)
        self._source: SnapshotSource = "none"
        self._endpoints: tuple[AnnouncedEndpoint, ...] = ()
        self._listeners: list[Listener] = []
        self._changed = threading.Condition()
        self._loop: LoopThread | None = None
        self._watcher: Watcher | None = None
        self._started = False
        self._static_seen: tuple[tuple[str, str], ...] = ()
        self._reinstalls = 0  # snapshots installed at the version already held

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Mesh:
        """Build from MESH_SERVICE, MESH_NAMESPACE, MESH_LABELS, MESH_CONTROL_PLANE, MESH_TOKEN,
        MESH_CONTROL_PLANE_CA, MESH_CONFIG, MESH_DATA_DIR, MESH_TRUST_DOMAIN, MESH_LOCALITY and
        MESH_DNS_SERVERS, MESH_EGRESS_HOSTS and MESH_EGRESS_LEARN; keyword options win."""
        s = MeshSettings.from_env(environ)
        values: dict[str, Any] = {
            "namespace": s.namespace,
            "labels": s.labels,
            "control_plane": s.control_plane,
            "control_plane_ca": s.control_plane_ca,
            "token": s.token,
            "config": s.config,
            "data_dir": s.data_dir,
            "trust_domain": s.trust_domain,
            "locality": s.locality,
            "dns_servers": s.dns_servers,
            "egress_hosts": s.egress_hosts,
            "learn_egress": s.learn_egress,
            "telemetry": s.telemetry,
        }
        values.update(options)
        return cls(s.service, **values)

    # --- the stacks ---------------------------------------------------------------------

    @property
    def client_stack(self) -> Stack[Exchange, Reply]:
        """The filters every outbound request runs through (``stack.insert_before(...)`` and
        assign it back to change them; it is composed once, here)."""
        return self._client_stack

    @client_stack.setter
    def client_stack(self, stack: Stack[Exchange, Reply]) -> None:
        self._client_stack = stack
        self.client_stack_runner = stack.compose(_no_terminal)

    @property
    def server_stack(self) -> Stack[Inbound, Answer]:
        """The filters every inbound request runs through, on every server (ASGI, WSGI, gRPC)."""
        return self._server_stack

    @server_stack.setter
    def server_stack(self, stack: Stack[Inbound, Answer]) -> None:
        self._server_stack = stack
        self.server_stack_runner = stack.compose(_no_server_terminal)

    # --- what the data plane reads ------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot; take it once per request and use that one throughout."""
        return self._snapshot

    @property
    def http_table(self) -> RoutingTable:
        """Compiled routes and clusters of the current snapshot, for HTTP clients."""
        return self._http_plane

    @property
    def grpc_table(self) -> RoutingTable:
        """The same for gRPC clients (endpoints that serve gRPC); built on first use per snapshot."""
        plane = self._grpc_plane
        snapshot = self._snapshot
        generation, answers = self._resolved()
        if plane is None or plane.snapshot is not snapshot or plane.generation != generation:
            plane = RoutingTable.build(
                snapshot, self.settings.namespace, self._source_labels, "grpc", answers, generation
            )
            self._grpc_plane = plane
        return plane

    @property
    def version(self) -> int:
        return self._snapshot.version

    @property
    def source(self) -> SnapshotSource:
        return self._source

    @property
    def service(self) -> str:
        return self.settings.service

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def labels(self) -> Mapping[str, str]:
        return self.settings.labels

    @property
    def source_labels(self) -> Mapping[str, str]:
        """The labels selectors match this workload by: its own, plus ``app`` = service."""
        return self._source_labels

    @property
    def identity(self) -> str:
        return self.registration().identity(self.settings.trust_domain)

    @property
    def started(self) -> bool:
        return self._started

    @property
    def ready(self) -> bool:
        """True once the process has policy to apply (from anywhere but nowhere)."""
        return self._source != "none"

    @property
    def security(self) -> WorkloadSecurity:
        """This workload's peer authentication and authorization policies, current snapshot."""
        return self._security

    def inbound(self, call: Call, started: float, peer: PeerIdentity | None = None) -> Inbound:
        """The server stack's view of one inbound request (ASGI, WSGI and gRPC adapters alike)."""
        return Inbound(
            call=call,
            clock=time.monotonic,
            started=started,
            ready=self.serving_ready,
            peer=peer,
            report=self.readiness_report,
            security=self._security,
            reveal_denials=self.reveal_denials,
            authenticate=self._authenticate,
            rate_limiter=self._rate_limiter,
            tracing=self.telemetry.tracing,
            metrics_page=self._metrics_page if self.settings.telemetry.metrics_path else None,
        )

    @property
    def metrics_registry(self) -> Any:
        """A prometheus_client registry with this workload's metrics (Istio's names)."""
        if self._metrics_registry is None:
            from .telemetry.prometheus import registry_for  # prometheus_client: once scraped

            self._metrics_registry = registry_for(self.metrics, self.metric_gauges)
        return self._metrics_registry

    def metric_owner(self) -> tuple[str, str]:
        return self.settings.service, self.settings.namespace

    def metric_gauges(self) -> dict[str, float]:
        """The mesh's own gauges: config version and age, certificate expiry."""
        from .telemetry.prometheus import seconds_until

        identity = self.workload_identity
        return {
            "config_version": float(self.version),
            "config_age_seconds": time.monotonic() - self._installed_at if self._installed_at else -1.0,
            "certificate_expiry_seconds": seconds_until(identity.expires if identity is not None else None),
        }

    def _metrics_page(self, ex: Inbound) -> Answer:
        peer = ex.peer
        if peer is not None and peer.spiffe_id not in self.metrics_principals:
            return Answer(
                403,
                local=True,
                body=b"metrics are served to scrapers without a mesh identity and to "
                b"Mesh.metrics_principals only\n",
            )
        from .telemetry.prometheus import CONTENT_TYPE_LATEST, scrape

        return Answer(200, local=True, body=scrape(self.metrics_registry), content_type=CONTENT_TYPE_LATEST)

    def serving_ready(self) -> bool:
        """Readiness of this workload's servers: policy loaded, not draining, and a valid
        certificate once it has a mesh identity or when PeerAuthentication is STRICT."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why the servers are not ready, or None when they are."""
        if not self.ready:
            return "no policy loaded yet"
        if self.draining:
            return "draining"
        identity = self.workload_identity
        if identity is not None and not identity.valid():
            return "the mesh certificate is missing or expired"
        if identity is None and self._security.mtls_mode == "STRICT":
            return "PeerAuthentication is STRICT and this workload has no mesh identity (no token)"
        return None

    def health(self) -> dict[str, Any]:
        """Readiness details for health endpoints and ``meshctl status``."""
        watcher = self._watcher
        return {
            "ready": self.ready,
            "draining": self.draining,
            "version": self.version,
            "source": self._source,
            "controlPlane": watcher.url if watcher else None,
            "connected": watcher.connected if watcher else None,
            "lastError": watcher.last_error if watcher else None,
            "identity": self.identity if self.workload_identity is not None else None,
            "certificateExpires": self._certificate_expiry(),
        }

    def readiness_report(self, ready: bool) -> bytes:
        """The readiness probe's body: the verdict and what it rests on (policy version and
        source, draining, control-plane connection, identity and certificate expiry), as JSON."""
        health = self.health()
        # Anyone who reaches the port reads this: no control-plane address, no error texts.
        report = {key: health[key] for key in _REPORTED}
        report.update(ready=ready, policyLoaded=self.ready)  # the verdict, not health()'s "ready"
        if not ready:
            report["reason"] = self.unready_reason()
        return json.dumps(report, default=str).encode() + b"\n"

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` after every swap (on the mesh's background thread)."""
        self._listeners.append(listener)

    def wait_for_version(self, version: int, timeout: float = 5.0) -> bool:
        """Block until the snapshot version is at least ``version``; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._snapshot.version >= version, timeout)

    # --- clients ----------------------------------------------------------------------

    def transport(self, inner: httpx.BaseTransport | None = None) -> MeshTransport:
        """An httpx transport that routes mesh hosts and passes other hosts through."""
        return MeshTransport(self, inner)

    def async_transport(self, inner: httpx.AsyncBaseTransport | None = None) -> AsyncMeshTransport:
        return AsyncMeshTransport(self, inner)

    def http_client(self, **options: Any) -> httpx.Client:
        """An ``httpx.Client`` whose requests to mesh hosts go through the mesh.

        Unless you pass ``timeout``, there is none beyond a 10 s connect timeout, as with Istio:
        a VirtualService ``timeout`` (or the caller's deadline) bounds a request, not httpx's
        5 s default, which would otherwise cut every longer route timeout short."""
        options.setdefault("timeout", MESH_CLIENT_TIMEOUT)
        return httpx.Client(transport=self.transport(), **options)

    def async_http_client(self, **options: Any) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` twin of :meth:`http_client` (same default timeout)."""
        options.setdefault("timeout", MESH_CLIENT_TIMEOUT)
        return httpx.AsyncClient(transport=self.async_transport(), **options)

    # --- registry -----------------------------------------------------------------------

    def registration(self) -> WorkloadRegistration:
        return WorkloadRegistration(
            id=self.workload_id,
            service=self.settings.service,
            namespace=self.settings.namespace,
            labels=dict(self.settings.labels),
            endpoints=list(self._endpoints),
            hostname=socket.gethostname(),
            certificate_expires=self._certificate_expiry(),
            certificate_issuer=self.workload_identity.issuer if self.workload_identity else None,
            pid=os.getpid(),
            meshlib_version=__version__,
            locality=self.settings.locality,
        )

    def _certificate_expiry(self) -> str | None:
        identity = self.workload_identity
        expires = identity.expires if identity is not None else None
        return expires.isoformat() if expires is not None else None

    def announce(self, endpoints: Iterable[AnnouncedEndpoint], timeout: float = 5.0) -> None:
        """Publish where this workload serves (and whether it is ready) in the registry."""
        self._endpoints = tuple(endpoints)
        watcher, loop = self._watcher, self._loop
        if watcher is None or loop is None:
            return  # static mode: nothing to tell; or not started: sent on start
        watcher.registration_changed()
        future = loop.submit(watcher.round_register())
        try:
            future.result(timeout)
        except Exception as exc:  # retried by the watch loop on reconnection
            log.warning("could not publish endpoints now (%s); will retry on reconnect", exc)

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> Mesh:
        if self._started:
            return self
        self._started = True
        s = self.settings
        observe = s.telemetry
        if observe.tracing:
            install_sdk(observe.tracing, s.service, s.namespace)
        otel_metrics.observe(self, self._meter_provider)
        if observe.metrics_port is not None:
            from .telemetry.prometheus import serve_metrics

            self._metrics_server = serve_metrics(
                self.metrics_registry, observe.metrics_address, observe.metrics_port
            )
        if s.control_plane:
            self._start_watching()
        elif s.config is not None:
            self._load_static(s.config)  # bad policy at start is the user's to fix: raise
            self._loop = LoopThread(f"meshlib-{s.service}")
            if self._jwks is not None:  # the first snapshot came before the loop
                self._jwks.want(self._jwks_uris, self._loop.loop)
            self.dns.want(self._snapshot.dns_names, self._loop.loop)
            self._loop.submit(self._poll_static(s.config))
        else:
            self._install(self._snapshot, "static")
        return self

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        otel_metrics.unobserve(self)
        server, self._metrics_server = self._metrics_server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        loop, watcher = self._loop, self._watcher
        if self.learned_egress is not None:
            self.learned_egress.close()  # nothing comes any more: no request waits for it
        if loop is not None:
            if watcher is not None:
                with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError, MeshError):
                    loop.submit(self._shutdown_watcher(watcher)).result(5.0)
            loop.stop()
        self._loop = self._watcher = None

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Mesh:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    # --- internals ----------------------------------------------------------------------

    def _start_watching(self) -> None:
        from .watcher import Watcher  # tenacity and the watch protocol: only with a config service

        s = self.settings
        self._loop = loop = LoopThread(f"meshlib-{s.service}")
        if s.token:
            for url in cleartext_remote(s.control_plane):
                log.warning(
                    "the bootstrap token goes to %s in the clear: serve the config service with "
                    "--tls and give its bundle as MESH_CONTROL_PLANE_CA",
                    url,
                )
            self._start_identity()
        self._watcher = watcher = Watcher(
            s.control_plane,
            self.registration,
            self._received,
            token=s.token,
            wait=self._watch_wait,
            verify=self._verify,
            egress_hosts=s.egress_hosts,
            learned=self.learned_egress,
        )
        first = loop.submit(watcher.round())
        try:
            first.result(self.startup_timeout)
        except Exception as exc:
            first.cancel()
            reason = "timed out" if isinstance(exc, concurrent.futures.TimeoutError) else str(exc)
            watcher.last_error = f"{watcher.url}: {reason}"
            self._fallback(f"config service {watcher.url} unavailable at start: {reason}")
        loop.submit(watcher.run())
        interval = s.telemetry.edge_report_interval
        if interval:
            loop.submit(self._report_edges(watcher, interval))

    async def _report_edges(self, watcher: Watcher, interval: float) -> None:
        """Every ``interval``: what this workload sent (and received from outside the mesh)
        since the last delivered report, per edge (``meshctl top``). Never on the request path."""
        from .telemetry.edges import EdgeTracker

        tracker = EdgeTracker(self.metrics)
        while True:
            await asyncio.sleep(interval)
            pending = tracker.report()
            if pending is None:
                continue
            report, commit = pending
            try:
                await watcher.send_edges(report)
            except (httpx.HTTPError, MeshError) as exc:
                log.debug("could not send the traffic summary: %s", exc)
            else:
                commit()

    def _fallback(self, why: str) -> None:
        from .last_known_good import load_last_known_good
        from .protocol import decode_snapshot

        s = self.settings
        data_dir = s.resolved_data_dir
        payload = load_last_known_good(data_dir)
        if payload is not None:
            try:
                self._install(decode_snapshot(payload), "last-known-good")
            except ConfigError as exc:
                log.error("%s; last-known-good copy in %s is unusable: %s", why, data_dir, exc)
            else:
                log.warning(
                    "%s; running on last-known-good config version %d from %s", why, self.version, data_dir
                )
                return
        if s.config is not None:
            self._load_static(s.config)
            log.warning("%s; running on %s until it is reachable", why, s.config)
            return
        log.error(
            "%s; no last-known-good config in %s: no policy is applied until it is reachable", why, data_dir
        )

    def _start_identity(self) -> None:
        """Key and certificate: reuse a saved one still fresh, else ask the CA now."""
        s = self.settings
        assert s.token is not None
        assert self._loop is not None
        from .workload_identity import WorkloadIdentity, keep_renewed  # cryptography: with an identity

        identity = self.workload_identity = WorkloadIdentity(
            s.resolved_data_dir, self.identity, ttl=self._certificate_ttl
        )
        due = identity.renew_at(self.rng)
        if (
            due is not None
            and due > dt.datetime.now(dt.UTC)
            and not self._saved_certificate_trusted(identity)
        ):
            due = None  # saved from another CA: get one from this config service's now
        if due is None or due <= dt.datetime.now(dt.UTC):
            try:
                token = s.token
                with httpx.Client(verify=self._verify) as client:
                    _first_answer(s.control_plane, lambda url: identity.request(client, url, token))
            except MeshError as exc:
                state = (
                    f"keeping the saved one (expires {identity.expires})"
                    if identity.valid()
                    else ("no mesh identity until it succeeds: servers requiring mTLS refuse traffic")
                )
                log.error("could not get a certificate: %s; %s", exc, state)
        self._loop.submit(
            keep_renewed(identity, list(s.control_plane), s.token, self.rng, self._renewed, self._verify)
        )

    def _saved_certificate_trusted(self, identity: WorkloadIdentity) -> bool:
        """Is a saved certificate anchored in the config service's trust bundle? True when the
        bundle cannot be fetched now (the saved certificate is then the best there is)."""
        roots: list[str] = []
        for url in self.settings.control_plane:  # the first replica that answers
            try:
                response = httpx.get(f"{url}/v1/trust-bundle", timeout=2.0, verify=self._verify)
                roots = [str(r) for r in response.json()["roots"]] if response.status_code == 200 else []
                break
            except httpx.HTTPError:
                continue
            except (ValueError, KeyError, TypeError):
                return True
        else:
            return True
        if not roots or identity.anchored(roots):
            return True
        log.warning("the saved certificate is not from this config service's CA: requesting a new one")
        return False

    async def _renewed(self) -> None:
        """A new certificate: the registry (``meshctl status``) learns its expiry and issuer."""
        watcher = self._watcher
        if watcher is None:
            return
        watcher.registration_changed()  # if sending it now fails, it goes before the next watch
        try:
            await watcher.round_register()
        except Exception as exc:
            log.debug("could not send the registration after renewal: %s", exc)

    def _received(self, snapshot: Snapshot, payload: dict[str, Any]) -> None:
        roots = payload.get("trustBundle")
        if self.workload_identity is not None and isinstance(roots, list) and roots:
            self.workload_identity.update_roots([str(r) for r in roots])
        from .last_known_good import save_last_known_good

        self._install(snapshot, "control-plane")
        try:
            save_last_known_good(
                self.settings.resolved_data_dir, payload, self._watcher.url if self._watcher else ""
            )
        except OSError as exc:
            log.warning("could not save last-known-good config: %s", exc)

    def _resolved(self) -> tuple[int, Answers]:
        """The DNS answers to build tables with, and the tables' generation. It rises with new
        answers and with every other snapshot installed at the version held (a rescope: more
        registry entries under the same number), so that the cluster states made on the tables
        before take the endpoints of the new ones (``ClusterState.refresh``)."""
        generation, answers = self.dns.current
        return generation + self._reinstalls, answers

    def _install(self, snapshot: Snapshot, source: SnapshotSource) -> None:
        if snapshot.version == self._snapshot.version and snapshot is not self._snapshot:
            self._reinstalls += 1
        generation, answers = self._resolved()
        plane = RoutingTable.build(
            snapshot, self.settings.namespace, self._source_labels, "http", answers, generation
        )
        security = snapshot.security_for(self.settings.namespace, self._source_labels, self.settings.service)
        authenticate, uris = self._authenticator(security)
        self._jwks_uris = uris
        limiter = compile_rate_limiter(security.rate_limits, self._rate_limiter)
        observe = telemetry_for(snapshot, self.settings.namespace, self._source_labels)
        if self._jwks is not None:
            self._jwks.want(uris, self._loop.loop if self._loop is not None else None)
        self.dns.want(snapshot.dns_names, self._loop.loop if self._loop is not None else None)
        self.clusters.current_version = snapshot.version
        with self._changed:
            self._http_plane = plane
            self._security = security
            self._authenticate = authenticate
            self._rate_limiter = limiter
            self.telemetry.apply(observe)
            self._snapshot = snapshot
            self._source = source
            self._installed_at = time.monotonic()
            self._changed.notify_all()
        for listener in self._listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("snapshot listener %r failed", listener)

    def _authenticator(
        self, security: WorkloadSecurity
    ) -> tuple[Callable[[Inbound], str | None] | None, dict[str, float]]:
        """The JWT authenticator of the workload's RequestAuthentications (None: none apply)
        and the jwksUris it fetches. PyJWT and cryptography load with the first one."""
        if not security.request_authentication and self._jwks is None:
            return None, {}
        from .request_authn import JwksCache, compile_authenticator

        if self._jwks is None:
            self._jwks = JwksCache()
        return compile_authenticator(security.request_authentication, self._jwks)

    def _dns_changed(self, answers: Answers) -> None:
        """New DNS answers (on the loop): the same snapshot's tables, with the new addresses."""
        generation = self._resolved()[0]
        with self._changed:
            snapshot = self._snapshot
            self._http_plane = RoutingTable.build(
                snapshot, self.settings.namespace, self._source_labels, "http", answers, generation
            )
            self._grpc_plane = None

    def _load_static(self, path: Path) -> None:
        self._static_seen = _fingerprint(path)  # before reading: an edit meanwhile is seen next poll
        from .policy.loader import load_paths  # YAML: only for a workload reading files

        loaded = load_paths([path], namespace=self.settings.namespace)
        refuse_in_files(loaded)  # an entry naming Consul: only the config service asks it
        missing = srv_lookups_missing(item.resource for item in loaded)
        if missing:
            raise ConfigError(missing)
        for skipped in loaded.skipped:
            log.info("skipped: %s", skipped)  # a kind meshlib does not apply (and why)
        version = self._snapshot.version + 1
        self._install(
            compile_snapshot(
                version, [item.resource for item in loaded], trust_domain=self.settings.trust_domain
            ),
            "static",
        )

    async def _poll_static(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self._static_poll)
            current = _fingerprint(path)
            if current == self._static_seen:
                continue
            self._static_seen = current
            try:
                self._load_static(path)
                log.info("reloaded %s: config version %d", path, self.version)
            except ConfigError as exc:
                log.error("kept the current config; %s is invalid:\n%s", path, exc)

    async def _shutdown_watcher(self, watcher: Watcher) -> None:
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
        await watcher.deregister()
        await watcher.aclose()


def _no_terminal(_: Exchange) -> Flow[Reply]:
    raise AssertionError("the upstream filter answers every attempt; nothing reaches past it")
    yield  # pragma: no cover - makes this a generator


def _no_server_terminal(_: Inbound) -> Flow[Answer]:
    raise AssertionError("the handle filter answers every request; nothing reaches past it")
    yield  # pragma: no cover - makes this a generator


def _dns_servers(value: str | Sequence[str] | None) -> list[str]:
    """``Mesh(dns_servers=...)``: a list, or one comma-separated string as in MESH_DNS_SERVERS."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return [item.strip() for item in items if item.strip()]


def _dns_lookup(settings: MeshSettings) -> Lookup:
    """MESH_DNS_SERVERS: dnspython towards them, for every name (TTLs respected). Unset: the
    system resolver for A/AAAA (/etc/hosts keeps working), dnspython on resolv.conf for SRV."""
    servers = settings.dns_server_addresses
    if not servers:
        return DefaultLookup()
    try:
        return DnsResolver(servers)
    except ImportError as exc:
        raise ConfigError(ConfigIssue(f"MESH_DNS_SERVERS={','.join(settings.dns_servers)}: {exc}")) from None


def _fingerprint(path: Path) -> tuple[tuple[str, str], ...]:
    """Content digests: an edit within one mtime tick that keeps the size is still seen."""
    try:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        return tuple((str(f), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files if f.is_file())
    except OSError:
        return ()


def _first_answer(urls: Sequence[str], ask: Callable[[str], None]) -> None:
    """``ask`` each config-service replica in turn until one answers; the last failure if none
    does (a refusal, e.g. a revoked token, is an answer: it is not asked of the others)."""
    failure: ControlPlaneError | None = None
    for url in urls:
        try:
            ask(url)
            return
        except ControlPlaneError as exc:
            if exc.status_code is not None:
                raise
            failure = exc
    if failure is not None:
        raise failure
