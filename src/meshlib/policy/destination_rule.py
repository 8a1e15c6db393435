"""DestinationRule (networking.istio.io): what happens to traffic once it is routed to a host."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import ClassVar, Literal

from pydantic import Field

from .base import FieldPath, Host, MeshModel, PortSelector, WorkloadSelector, check_export_to
from .duration import Duration

__all__ = [
    "ClientTLSSettings",
    "ConnectionPoolSettings",
    "ConsistentHashLB",
    "DestinationRuleSpec",
    "LoadBalancerSettings",
    "OutlierDetection",
    "RetryBudget",
    "Subset",
    "TrafficPolicy",
]


class CookieAttribute(MeshModel):
    name: str = Field(min_length=1)
    value: str | None = None


class HTTPCookie(MeshModel):
    """With ``ttl``, a request without the cookie gets one made up and set on its answer."""

    name: str = Field(min_length=1)
    path: str | None = None
    ttl: Duration | None = None
    attributes: tuple[CookieAttribute, ...] = ()


class RingHash(MeshModel):
    minimum_ring_size: int | None = Field(default=None, ge=0, le=8_388_608)  # Envoy's maximum ring


class MagLev(MeshModel):
    table_size: int | None = Field(default=None, ge=0, le=5_000_011)  # Envoy's limit

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        size = self.table_size
        if size and (size < 2 or any(size % d == 0 for d in range(2, int(size**0.5) + 1))):
            yield ("tableSize",), f"{size} is not a prime number (Maglev needs one, e.g. 65537)"


class ConsistentHashLB(MeshModel):
    """The hash key (one of four) and the algorithm (ring hash or maglev)."""

    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: int | None = Field(default=None, ge=0)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        keys = [
            n
            for n in ("http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name")
            if getattr(self, n) not in (None, False)
        ]
        if len(keys) != 1:
            yield (), "set exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
        if self.ring_hash is not None and self.maglev is not None:
            yield ("maglev",), "set only one of ringHash and maglev"


_NO_LOCALITY = "endpoints carry no locality in meshlib yet, so all of them are one locality; remove it"


class LocalityLoadBalancerSetting(MeshModel):
    """Locality load balancing (core/locality.py): distribute, or failover by priorities."""

    distribute: tuple[dict[str, object], ...] = ()
    failover: tuple[dict[str, str], ...] = ()
    failover_priority: tuple[str, ...] = ()
    enabled: bool | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        """Istio's rules: one of distribute and failover; weights of a ``to`` add up to 100."""
        if self.distribute and self.failover:
            yield ("failover",), "set only one of distribute and failover"
        for index, entry in enumerate(self.distribute):
            source, targets = entry.get("from"), entry.get("to")
            if not isinstance(source, str) or not source:
                yield ("distribute", index, "from"), "required: the callers' locality (e.g. us-east/*)"
            if not isinstance(targets, dict) or not targets:
                yield ("distribute", index, "to"), "required: locality -> weight"
                continue
            weights = list(targets.values())
            if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights):
                yield ("distribute", index, "to"), "weights must be whole numbers >= 0"
            elif sum(weights) != 100:
                yield ("distribute", index, "to"), f"weights add up to {sum(weights)}, must be 100"
        for index, failover in enumerate(self.failover):
            source, target = failover.get("from"), failover.get("to")
            if not source or not target:
                yield ("failover", index), "needs from and to (regions)"
            elif source == target:
                yield ("failover", index, "to"), "from and to must be different regions"


class WarmupConfiguration(MeshModel):
    duration: Duration
    minimum_percent: float | None = Field(default=None, ge=0, le=100)
    aggression: float | None = Field(default=None, ge=1)


SimpleLB = Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"]


class LoadBalancerSettings(MeshModel):
    """``simple: PASSTHROUGH`` (send to the address the caller asked for, no balancing) is
    refused: a mesh host's endpoints are the only addresses meshlib sends to."""

    simple: SimpleLB | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: LocalityLoadBalancerSetting | None = None
    warmup_duration_secs: Duration | None = None
    warmup: WarmupConfiguration | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        warm = (
            "warmup"
            if self.warmup is not None
            else "warmupDurationSecs"
            if self.warmup_duration_secs
            else None
        )
        if warm is not None and (
            self.consistent_hash is not None or self.simple in ("RANDOM", "PASSTHROUGH")
        ):
            yield (
                (warm,),
                "slow start works with ROUND_ROBIN and LEAST_REQUEST only (Envoy's slow_start_config)",
            )
        if self.warmup is not None and self.warmup_duration_secs:
            yield ("warmup",), "set only one of warmup and warmupDurationSecs"
        if self.simple == "PASSTHROUGH":
            yield (
                ("simple",),
                "PASSTHROUGH is not supported by meshlib: it sends to a host's endpoints, never to an "
                "address the caller resolved; for traffic to the host as asked, declare a ServiceEntry "
                "with resolution NONE",
            )
        if self.simple is not None and self.consistent_hash is not None:
            yield ("consistentHash",), "set only one of simple and consistentHash"


class TcpKeepalive(MeshModel):
    probes: int | None = Field(default=None, ge=0)
    time: Duration | None = None
    interval: Duration | None = None


class TCPSettings(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "tcp_keepalive": "TCP keepalive probes on upstream connections are not set; remove it",
    }

    max_connections: int | None = Field(default=None, ge=0)
    connect_timeout: Duration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: Duration | None = None
    idle_timeout: Duration | None = None


class HTTP2KeepAlive(MeshModel):
    """Newer istio/api: HTTP/2 PING keepalive toward upstreams."""

    time: Duration | None = None
    interval: Duration | None = None
    timeout: Duration | None = None


class HTTPSettings(MeshModel):
    http1_max_pending_requests: int | None = Field(default=None, ge=0)
    http2_max_requests: int | None = Field(default=None, ge=0)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: Duration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    use_client_protocol: bool | None = None
    max_concurrent_streams: int | None = Field(default=None, ge=0)
    http2_keep_alive: HTTP2KeepAlive | None = Field(default=None, alias="http2KeepAlive")

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "http2_keep_alive": (
            "HTTP/2 PING keepalive toward upstreams is not sent (HTTP upstreams are spoken to in "
            "HTTP/1.1); remove it"
        ),
        "use_client_protocol": (
            "meshlib speaks HTTP/1.1 to HTTP upstreams and HTTP/2 to gRPC ones, whatever the caller "
            "used; remove it"
        ),
        "max_concurrent_streams": "HTTP/2 stream limits per upstream connection are not set; remove it",
    }

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.h2_upgrade_policy == "UPGRADE":
            yield (
                ("h2UpgradePolicy",),
                "UPGRADE is not supported by meshlib: HTTP upstreams are spoken to in HTTP/1.1; "
                "use DEFAULT or DO_NOT_UPGRADE",
            )


class ConnectionPoolSettings(MeshModel):
    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None


class OutlierDetection(MeshModel):
    """Envoy outlier detection as Istio exposes it (ejection of failing endpoints)."""

    split_external_local_origin_errors: bool | None = None
    consecutive_local_origin_failures: int | None = Field(default=None, ge=0)
    consecutive_gateway_errors: int | None = Field(default=None, ge=0)
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, alias="consecutive5xxErrors")
    consecutive_errors: int | None = Field(default=None, ge=0)  # deprecated: gateway errors (outlier R7)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        for name in ("interval", "base_ejection_time"):
            value = getattr(self, name)
            if value is not None and value < 0.001:
                yield (type(self).model_fields[name].alias or name,), "must be at least 1ms"


class ClientTLSSettings(MeshModel):
    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    credential_name: str | None = None
    subject_alt_names: tuple[str, ...] = ()
    sni: str | None = None
    insecure_skip_verify: bool | None = None
    ca_crl: str | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        """Istio's rules, and a refusal for every field that would change nothing here (Istio
        ignores them in those modes; a rule that looks secure and is not must not load)."""
        fields = type(self).model_fields

        def _camel(name: str) -> str:
            return fields[name].alias or name

        if self.credential_name:
            yield (
                (_camel("credential_name"),),
                "names a Kubernetes secret, which meshlib cannot read: give the PEM files' paths "
                "as clientCertificate, privateKey and caCertificates (and caCrl) instead",
            )
        mode = self.mode
        if mode in ("SIMPLE", "MUTUAL") and self.insecure_skip_verify:
            for name in ("ca_certificates", "ca_crl", "subject_alt_names"):
                if getattr(self, name):
                    yield (
                        (_camel(name),),
                        "insecureSkipVerify: true skips the server certificate checks this sets up: "
                        "remove one of the two",
                    )
        if mode == "MUTUAL":
            for name in ("client_certificate", "private_key"):
                if not getattr(self, name):
                    yield (_camel(name),), "required with mode MUTUAL (a PEM file's path)"
            return
        client = ("client_certificate", "private_key")
        if mode == "SIMPLE":
            for name in client:
                if getattr(self, name):
                    yield (
                        (_camel(name),),
                        "is presented only with mode MUTUAL (SIMPLE sends no client certificate): "
                        "set mode MUTUAL or remove it",
                    )
            return
        why = (
            "ISTIO_MUTUAL uses this workload's mesh certificate and checks the SPIFFE ID the "
            "registry gives the endpoint"
            if mode == "ISTIO_MUTUAL"
            else "DISABLE originates no TLS"
        )
        verifying = ("ca_certificates", "ca_crl", "sni", "subject_alt_names", "insecure_skip_verify")
        for name in (*client, *verifying):
            if getattr(self, name):
                yield (_camel(name),), f"applies to modes SIMPLE and MUTUAL only ({why}): remove it"


class RetryBudget(MeshModel):
    """Istio's trafficPolicy.retryBudget: retries allowed as a share of active requests."""

    percent: float | None = Field(default=None, ge=0.0, le=100.0)
    min_retry_concurrency: int | None = Field(default=None, ge=0)
    budget_interval: Duration | None = None


class PortTrafficPolicy(MeshModel):
    port: PortSelector
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TunnelSettings(MeshModel):
    protocol: Literal["CONNECT", "POST"] | None = None
    target_host: Host
    target_port: int = Field(ge=1, le=65535)


class ProxyProtocol(MeshModel):
    version: Literal["V1", "V2"] | None = None


class TrafficPolicy(MeshModel):
    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "tunnel": (
            "HTTP CONNECT/POST tunnelling through a proxy is not implemented; give httpx the proxy "
            "(httpx.Client(proxy=...)) instead"
        ),
        "proxy_protocol": "PROXY protocol headers toward upstreams are not sent; remove it",
    }

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: tuple[PortTrafficPolicy, ...] = ()
    tunnel: TunnelSettings | None = None
    proxy_protocol: ProxyProtocol | None = None
    retry_budget: RetryBudget | None = None

    def for_port(self, port: int | None) -> TrafficPolicy:
        """The policy for one port. Istio: a matching portLevelSettings entry replaces the four
        per-port settings outright; what it leaves out gets defaults, not the rule-level value."""
        if port is None:
            return self
        for entry in self.port_level_settings:
            if entry.port.number == port:
                return self.model_copy(update={name: getattr(entry, name) for name in _PER_PORT})
        return self

    def merged_with(self, subset: TrafficPolicy | None, port: int | None = None) -> TrafficPolicy:
        """Istio's subset rule: resolve both sides for the port, then each setting the subset
        has replaces the rule's."""
        base = self.for_port(port)
        if subset is None:
            return base
        override = subset.for_port(port)
        names = (*_PER_PORT, "tunnel", "proxy_protocol", "retry_budget")
        return base.model_copy(
            update={n: getattr(override, n) for n in names if getattr(override, n) is not None}
        )


_PER_PORT = ("load_balancer", "connection_pool", "outlier_detection", "tls")


class Subset(MeshModel):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


class DestinationRuleSpec(MeshModel):
    """Which rule a caller uses is Istio's lookup (Snapshot.destination_rule): its own
    namespace's (a workloadSelector one only for the workloads it selects), then the host's
    namespace's, then the root namespace's, each only if exported to the caller."""

    host: Host
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    export_to: tuple[str, ...] = ()
    workload_selector: WorkloadSelector | None = None

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        yield from check_export_to(self.export_to)
        if self.workload_selector is not None:
            for key, value in self.workload_selector.match_labels.items():
                if "*" in value:
                    yield (
                        ("workloadSelector", "matchLabels", key),
                        "wildcard is not supported in selector",
                    )
        seen: set[str] = set()
        for index, subset in enumerate(self.subsets):
            if subset.name in seen:
                yield ("subsets", index, "name"), f"duplicate subset name {subset.name!r}"
            seen.add(subset.name)
