"""ServiceEntry (networking.istio.io): services and endpoints declared by hand.

Every field is applied as Istio applies it, or refused here with the reason and what to
write instead (meshlib runs inside the process: it sees the HTTP and gRPC calls made with
its clients, and nothing else). The checks follow Istio's own validation
(``pkg/config/validation`` ``ValidateServiceEntry``) and the CRD's rules, plus the
refusals of what meshlib does not do:

- ``resolution: DYNAMIC_DNS`` (Envoy's dynamic forward proxy): not implemented; NONE does
  in-process what it is for (each request goes to the host it names).
- port protocols other than HTTP, HTTP2, HTTPS, GRPC, GRPC-Web and TLS: meshlib's clients
  speak HTTP and gRPC; TCP, MONGO, REDIS... traffic of the process never reaches it.
- endpoint ``network`` (multi-network gateways): not implemented.
- ``subjectAltNames`` other than one SPIFFE ID: the peer of mesh mTLS proves one SPIFFE ID.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from typing import ClassVar, Literal

from pydantic import Field

from ..names import check_dns_label, check_locality
from .base import Address, FieldPath, Host, MeshModel, check_export_to
from .srv_endpoints import check_srv_endpoints

__all__ = [
    "HTTP_PROTOCOLS",
    "TLS_MODE_LABEL",
    "EntryWorkloadSelector",
    "ServiceEntrySpec",
    "ServicePort",
    "WorkloadEntry",
]

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTPS", "GRPC", "GRPC-WEB", "TLS"})
"""Port protocols meshlib's clients carry (Istio parses protocol names case-insensitively)."""
_NOT_SEEN = frozenset({"TCP", "UDP", "MONGO", "REDIS", "MYSQL", "THRIFT", "HTTP_PROXY"})
TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""An endpoint label: ``istio`` means it serves Istio mTLS (auto mTLS then uses it)."""


class ServicePort(MeshModel):
    number: int = Field(ge=1, le=65535)
    protocol: str | None = None
    name: str = Field(min_length=1)
    target_port: int | None = Field(default=None, ge=1, le=65535)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        try:
            check_dns_label(self.name, "port name")
        except ValueError as exc:
            yield ("name",), str(exc)
        protocol = (self.protocol or "").upper()
        if protocol in _NOT_SEEN:
            yield (
                ("protocol",),
                f"protocol {self.protocol} is not supported: meshlib's clients carry HTTP and gRPC, "
                "and no other traffic of the process reaches the mesh (there is no sidecar to "
                "intercept it); declare the port HTTP, HTTP2, HTTPS, GRPC or TLS, or leave this "
                "service out of the policy meshlib loads",
            )
        elif protocol and protocol not in HTTP_PROTOCOLS:
            yield (
                ("protocol",),
                f"unsupported protocol {self.protocol!r}: use HTTP, HTTP2, HTTPS, GRPC or TLS",
            )


class WorkloadEntry(MeshModel):
    """One endpoint: an address, per-port-name port overrides and labels for subsets."""

    address: Address | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0, le=4294967295)
    service_account: str | None = None

    UNSUPPORTED: ClassVar[Mapping[str, str]] = {
        "network": (
            "meshlib has no multi-network gateways, every endpoint is called directly at its "
            "address; remove network"
        ),
    }

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.locality:
            try:
                check_locality(self.locality)
            except ValueError as exc:
                yield ("locality",), str(exc)
        for name, port in self.ports.items():
            if not 1 <= port <= 65535:
                yield ("ports", name), f"port must be between 1-65535; got {port}"
        if self.service_account is not None:
            try:
                check_dns_label(self.service_account, "serviceAccount")
            except ValueError as exc:
                yield ("serviceAccount",), str(exc)


class EntryWorkloadSelector(MeshModel):
    """ServiceEntry's selector: note the key is ``labels``, not ``matchLabels``."""

    labels: dict[str, str] = Field(default_factory=dict)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        for key, value in self.labels.items():
            if "*" in key or "*" in value:
                yield ("labels", key), "wildcard is not supported in selector"


Location = Literal["MESH_EXTERNAL", "MESH_INTERNAL"]
Resolution = Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"]


class ServiceEntrySpec(MeshModel):
    hosts: tuple[Host, ...] = Field(min_length=1)
    addresses: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    location: Location | None = None  # unset: MESH_EXTERNAL, Istio's enum default
    resolution: Resolution | None = None  # unset: NONE, Istio's enum default
    endpoints: tuple[WorkloadEntry, ...] = ()
    workload_selector: EntryWorkloadSelector | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()

    @property
    def mode(self) -> Resolution:
        return self.resolution or "NONE"

    @property
    def external(self) -> bool:
        return self.location != "MESH_INTERNAL"

    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``addresses`` as networks (a VIP is a /32 or /128); valid ones only."""
        out = []
        for address in self.addresses:
            try:
                out.append(ipaddress.ip_network(address, strict=False))
            except ValueError:
                continue
        return tuple(out)

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        mode = self.mode
        if self.endpoints and self.workload_selector is not None:
            yield ("workloadSelector",), "set only one of endpoints and workloadSelector"
        if "*" in self.hosts:
            yield ("hosts",), "'*' is not allowed; name the hosts"
        yield from self._check_resolution(mode)
        yield from self._check_addresses(mode)
        names: set[str] = set()
        numbers: set[int] = set()
        for index, port in enumerate(self.ports):
            if port.number in numbers:
                yield ("ports", index, "number"), f"duplicate port number {port.number}"
            numbers.add(port.number)
            if port.name in names:
                yield ("ports", index, "name"), f"duplicate port name {port.name!r}"
            names.add(port.name)
            if port.target_port is not None and mode == "NONE":
                yield (
                    ("ports", index, "targetPort"),
                    "targetPort has no effect when resolution mode is NONE (each request goes to "
                    "the port it names); remove it, or list endpoints with resolution STATIC or DNS",
                )
        for index, endpoint in enumerate(self.endpoints):
            if not endpoint.address:
                yield ("endpoints", index, "address"), "address is required"
            elif mode == "STATIC" and not _is_ip(endpoint.address):
                yield (
                    ("endpoints", index, "address"),
                    f"endpoint address {endpoint.address!r} is not a valid IP address (resolution "
                    "STATIC); use resolution DNS for endpoints named by DNS",
                )
            for port_name in endpoint.ports:
                if port_name not in names:
                    yield (
                        ("endpoints", index, "ports", port_name),
                        (f"no port named {port_name!r} in spec.ports"),
                    )
        yield from check_srv_endpoints(mode, self.ports, self.endpoints)
        yield from self._check_identity()
        yield from check_export_to(self.export_to)

    def _check_resolution(self, mode: Resolution) -> Iterator[tuple[FieldPath, str]]:
        if mode == "DYNAMIC_DNS":
            yield (
                ("resolution",),
                "resolution DYNAMIC_DNS (Envoy's dynamic forward proxy) is not supported; use "
                "NONE: in-process each request then goes to the host it names, resolved by the "
                "system resolver, with this entry's DestinationRule and VirtualService applied",
            )
        if mode == "NONE" and self.endpoints:
            yield ("endpoints",), "endpoints need resolution STATIC, DNS or DNS_ROUND_ROBIN"
        if mode == "NONE" and self.workload_selector is not None:
            yield (
                ("workloadSelector",),
                "workloadSelector has no effect when resolution mode is NONE (each request goes to "
                "the address it names); use resolution STATIC to send to the selected workloads",
            )
        if mode == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
            yield ("endpoints",), "DNS_ROUND_ROBIN allows at most one endpoint"
        if mode in ("DNS", "DNS_ROUND_ROBIN") and not self.endpoints:
            for index, host in enumerate(self.hosts):
                if "*" in host:
                    yield (
                        ("hosts", index),
                        f"hosts must be FQDN if no endpoints are provided for resolution mode {mode}: "
                        f"{host!r} is a wildcard (use resolution NONE to send each request to the "
                        "host it names, or list the endpoints)",
                    )

    def _check_addresses(self, mode: Resolution) -> Iterator[tuple[FieldPath, str]]:
        for index, address in enumerate(self.addresses):
            try:
                network = ipaddress.ip_network(address, strict=False)
            except ValueError:
                yield ("addresses", index), f"{address!r} is not an IP address or a CIDR block"
                continue
            if "/" in address and mode not in ("NONE", "STATIC"):
                yield ("addresses", index), "CIDR addresses are allowed only for NONE/STATIC resolution types"
            if network.is_unspecified or network.prefixlen == 0:
                yield ("addresses", index), f"{address!r} would take every address; name the service's own"

    def _check_identity(self) -> Iterator[tuple[FieldPath, str]]:
        sans = self.subject_alt_names
        for index, name in enumerate(sans):
            if not name.startswith("spiffe://"):
                yield (
                    ("subjectAltNames", index),
                    f"{name!r} is not a SPIFFE ID: meshlib checks the SPIFFE ID mesh mTLS peers "
                    "prove (spiffe://<trust domain>/ns/<namespace>/sa/<account>); for TLS "
                    "origination name the server's names in the DestinationRule's tls.subjectAltNames",
                )
        if len(sans) > 1:
            yield (
                ("subjectAltNames",),
                "more than one subjectAltName is not supported: meshlib verifies one SPIFFE ID "
                "per endpoint; keep the one the endpoints' certificates carry (or give each "
                "endpoint its serviceAccount)",
            )
        for index, endpoint in enumerate(self.endpoints):
            if endpoint.service_account is not None and sans:
                yield (
                    ("endpoints", index, "serviceAccount"),
                    "set either the endpoints' serviceAccount or the entry's subjectAltNames, not "
                    "both: meshlib verifies one SPIFFE ID per endpoint",
                )
            if (
                endpoint.labels.get(TLS_MODE_LABEL) == "istio"
                and endpoint.service_account is None
                and not sans
            ):
                yield (
                    ("endpoints", index, "labels", TLS_MODE_LABEL),
                    "mesh mTLS to this endpoint needs the identity it proves: set its "
                    "serviceAccount (or the entry's subjectAltNames)",
                )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
