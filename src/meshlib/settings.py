"""Process configuration from MESH_* environment variables (12-factor)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .core.hosts import CLUSTER_DOMAIN
from .egress_scope import canonical_hosts
from .errors import ConfigError, ConfigIssue
from .names import check_dns_label, check_label_key, check_label_value, check_locality
from .paths import default_workload_dir

__all__ = ["MeshSettings", "TelemetrySettings", "parse_dns_server", "parse_labels"]


def parse_labels(text: str, variable: str = "MESH_LABELS") -> dict[str, str]:
    """``version=v1,zone=a`` -> ``{"version": "v1", "zone": "a"}``."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError(ConfigIssue(f"{variable}: {item!r} is not key=value (e.g. version=v1,zone=a)"))
        try:
            labels[check_label_key(key)] = check_label_value(value)
        except ValueError as exc:
            raise ConfigError(ConfigIssue(f"{variable}: {exc}")) from None
    return labels


def parse_dns_server(text: str, variable: str = "MESH_DNS_SERVERS") -> tuple[str, int]:
    """``10.0.0.2``, ``127.0.0.1:5353``, ``[::1]:5353``, ``fd00::2`` -> (ip, port), port 53
    when none is given. An IP address: the resolver that finds names cannot need one itself."""
    host, port_text = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port_text = rest.removeprefix(":") if rest.startswith(":") else "\x00"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        address = ipaddress.ip_address(host)
        port = int(port_text) if port_text.isdigit() else -1
    except ValueError:
        address, port = None, -1
    if address is None or not 0 < port < 65536:
        raise ConfigError(
            ConfigIssue(
                f"{variable}: {text!r} is not a DNS server address: write ip or ip:port "
                "(e.g. 127.0.0.1:5353 or [::1]:53), comma-separated"
            )
        )
    return str(address), port


@dataclass(frozen=True)
class MeshSettings:
    """Everything a Mesh needs to know about the process it runs in."""

    service: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    control_plane: tuple[str, ...] = ()
    control_plane_ca: Path | None = None  # the bundle a TLS config service is verified by
    token: str | None = field(default=None, repr=False)
    config: Path | None = None
    data_dir: Path | None = None
    trust_domain: str = CLUSTER_DOMAIN
    locality: str = ""  # region/zone/subzone, for locality load balancing
    dns_servers: tuple[str, ...] = ()  # ip[:port] of the DNS servers resolution DNS asks; () = the system's
    # The hosts this workload calls (Istio Sidecar egress.hosts form); () = the whole registry.
    egress_hosts: tuple[str, ...] = ()
    # Learn egress hosts from traffic (meshlib.learned_egress): the registry entries of the
    # services this workload calls, added to the declared ones as it first calls them.
    learn_egress: bool = False
    telemetry: TelemetrySettings = field(default_factory=lambda: TelemetrySettings())

    def __post_init__(self) -> None:
        try:
            check_locality(self.locality)
        except ValueError as exc:
            raise ConfigError(ConfigIssue(f"MESH_LOCALITY: {exc}")) from None
        for variable, value in (("MESH_SERVICE", self.service), ("MESH_NAMESPACE", self.namespace)):
            try:
                check_dns_label(value)
            except ValueError as exc:
                raise ConfigError(ConfigIssue(f"{variable}: {exc}")) from None
        for key, value in self.labels.items():
            try:
                check_label_key(key)
                check_label_value(value)
            except ValueError as exc:
                raise ConfigError(ConfigIssue(f"MESH_LABELS: {exc}")) from None
        for url in self.control_plane:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(ConfigIssue(f"MESH_CONTROL_PLANE: {url!r} is not an http(s) URL"))
        for server in self.dns_servers:
            parse_dns_server(server)
        try:
            object.__setattr__(self, "egress_hosts", canonical_hosts(self.egress_hosts, self.namespace))
        except ValueError as exc:
            raise ConfigError(ConfigIssue(f"MESH_EGRESS_HOSTS: {exc}")) from None

    @property
    def dns_server_addresses(self) -> tuple[tuple[str, int], ...]:
        """``dns_servers`` as (ip, port) pairs."""
        return tuple(parse_dns_server(server) for server in self.dns_servers)

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or default_workload_dir(self.service, self.namespace)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MeshSettings:
        env = os.environ if environ is None else environ
        service = env.get("MESH_SERVICE", "").strip()
        if not service:
            raise ConfigError(ConfigIssue("MESH_SERVICE is required: the name of this workload's service"))
        urls = tuple(u.strip().rstrip("/") for u in env.get("MESH_CONTROL_PLANE", "").split(",") if u.strip())
        config = env.get("MESH_CONFIG", "").strip()
        data_dir = env.get("MESH_DATA_DIR", "").strip()
        return cls(
            service=service,
            namespace=env.get("MESH_NAMESPACE", "").strip() or "default",
            labels=parse_labels(env.get("MESH_LABELS", "")),
            control_plane=urls,
            control_plane_ca=Path(ca) if (ca := env.get("MESH_CONTROL_PLANE_CA", "").strip()) else None,
            token=env.get("MESH_TOKEN") or None,
            config=Path(config) if config else None,
            data_dir=Path(data_dir) if data_dir else None,
            trust_domain=env.get("MESH_TRUST_DOMAIN", "").strip() or CLUSTER_DOMAIN,
            locality=env.get("MESH_LOCALITY", "").strip(),
            dns_servers=tuple(d.strip() for d in env.get("MESH_DNS_SERVERS", "").split(",") if d.strip()),
            egress_hosts=tuple(h.strip() for h in env.get("MESH_EGRESS_HOSTS", "").split(",") if h.strip()),
            learn_egress=_flag(env, "MESH_EGRESS_LEARN"),
            telemetry=TelemetrySettings.from_env(env),
        )


def _percent(env: Mapping[str, str], variable: str, default: float) -> float:
    text = env.get(variable, "").strip().removesuffix("%")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 100.0:
        raise ConfigError(ConfigIssue(f"{variable}: {text!r} is not a percentage between 0 and 100"))
    return value


MIN_EDGE_REPORT_INTERVAL = 0.5  # seconds: the rate at which a workload may report is bounded


def _seconds(env: Mapping[str, str], variable: str, default: float) -> float:
    text = env.get(variable, "").strip().removesuffix("s")
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(ConfigIssue(f"{variable}: {text!r} is not a number of seconds")) from None


def _flag(env: Mapping[str, str], variable: str) -> bool:
    text = env.get(variable, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(ConfigIssue(f"{variable}: {text!r} is not a boolean (1/0, true/false)"))


@dataclass(frozen=True)
class TelemetrySettings:
    """Tracing, metrics and access logs (MESH_TRACING, MESH_TRACE_SAMPLING, ...)."""

    tracing: str = ""  # "otlp" or "console": meshlib sets up an OpenTelemetry SDK ("": the app's own)
    trace_sampling: float = 1.0  # percent of new traces sampled (Istio's default: 1)
    trust_caller_sampling: bool = False  # a caller without a mesh identity may force sampling
    access_log: str = ""  # "stdout", "stderr" or a file ("": off)
    access_log_sampling: float = 100.0
    metrics_port: int | None = None  # a Prometheus endpoint of its own on this port
    metrics_address: str = "127.0.0.1"
    metrics_path: bool = False  # serve /.well-known/meshlib/metrics on the serving ports
    # Seconds between per-edge traffic summaries sent to the config service (meshctl top); 0: none.
    edge_report_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.tracing not in ("", "otlp", "console"):
            raise ConfigError(
                ConfigIssue(f"MESH_TRACING: {self.tracing!r} is not one of otlp, console (or unset)")
            )
        for variable, value in (
            ("MESH_TRACE_SAMPLING", self.trace_sampling),
            ("MESH_ACCESS_LOG_SAMPLING", self.access_log_sampling),
        ):
            if not 0.0 <= value <= 100.0:
                raise ConfigError(ConfigIssue(f"{variable}: {value!r} is not a percentage between 0 and 100"))
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(ConfigIssue(f"MESH_METRICS_PORT: {self.metrics_port} is not a port"))
        interval = self.edge_report_interval
        if not (interval == 0 or MIN_EDGE_REPORT_INTERVAL <= interval <= 3600):
            raise ConfigError(
                ConfigIssue(
                    f"MESH_EDGE_REPORT_INTERVAL: {interval!r} is not 0 (off) or between "
                    f"{MIN_EDGE_REPORT_INTERVAL} and 3600 seconds"
                )
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TelemetrySettings:
        port_text = env.get("MESH_METRICS_PORT", "").strip()
        if port_text and not port_text.isdigit():
            raise ConfigError(ConfigIssue(f"MESH_METRICS_PORT: {port_text!r} is not a port number"))
        return cls(
            tracing=env.get("MESH_TRACING", "").strip().lower(),
            trace_sampling=_percent(env, "MESH_TRACE_SAMPLING", 1.0),
            trust_caller_sampling=_flag(env, "MESH_TRACE_TRUST_CALLERS"),
            access_log=env.get("MESH_ACCESS_LOG", "").strip(),
            access_log_sampling=_percent(env, "MESH_ACCESS_LOG_SAMPLING", 100.0),
            metrics_port=int(port_text) if port_text else None,
            metrics_address=env.get("MESH_METRICS_ADDRESS", "").strip() or "127.0.0.1",
            metrics_path=_flag(env, "MESH_METRICS_PATH"),
            edge_report_interval=_seconds(env, "MESH_EDGE_REPORT_INTERVAL", 5.0),
        )
