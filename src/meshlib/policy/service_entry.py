"""ServiceEntry (networking.istio.io): services and endpoints declared by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from .base import Address, FieldPath, Host, MeshModel

__all__ = ["ServiceEntrySpec", "ServicePort", "WorkloadEntry"]


class ServicePort(MeshModel):
    number: int = Field(ge=1, le=65535)
    protocol: str | None = None
    name: str = Field(min_length=1)
    target_port: int | None = Field(default=None, ge=1, le=65535)


class WorkloadEntry(MeshModel):
    """One endpoint: an address, per-port-name port overrides and labels for subsets."""

    address: Address | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    network: str | None = None
    locality: str | None = None
    weight: int | None = Field(default=None, ge=0)
    service_account: str | None = None


class EntryWorkloadSelector(MeshModel):
    """ServiceEntry's selector: note the key is ``labels``, not ``matchLabels``."""

    labels: dict[str, str] = Field(default_factory=dict)


class ServiceEntrySpec(MeshModel):
    hosts: tuple[Host, ...] = Field(min_length=1)
    addresses: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] | None = None
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] | None = None
    endpoints: tuple[WorkloadEntry, ...] = ()
    workload_selector: EntryWorkloadSelector | None = None
    export_to: tuple[str, ...] = ()
    subject_alt_names: tuple[str, ...] = ()

    def _check(self) -> Iterator[tuple[FieldPath, str]]:
        if self.endpoints and self.workload_selector is not None:
            yield ("workloadSelector",), "set only one of endpoints and workloadSelector"
        if "*" in self.hosts:
            yield ("hosts",), "'*' is not allowed; name the hosts"
        if self.resolution in (None, "NONE") and self.endpoints:
            yield ("endpoints",), "endpoints need resolution STATIC, DNS or DNS_ROUND_ROBIN"
        if self.resolution == "DNS_ROUND_ROBIN" and len(self.endpoints) > 1:
            yield ("endpoints",), "DNS_ROUND_ROBIN allows at most one endpoint"
        names: set[str] = set()
        numbers: set[int] = set()
        for index, port in enumerate(self.ports):
            if port.number in numbers:
                yield ("ports", index, "number"), f"duplicate port number {port.number}"
            numbers.add(port.number)
            if port.name in names:
                yield ("ports", index, "name"), f"duplicate port name {port.name!r}"
            names.add(port.name)
        for index, endpoint in enumerate(self.endpoints):
            if self.resolution == "STATIC" and not endpoint.address:
                yield ("endpoints", index, "address"), "STATIC resolution needs an address"
            for port_name in endpoint.ports:
                if port_name not in names:
                    yield (
                        ("endpoints", index, "ports", port_name),
                        (f"no port named {port_name!r} in spec.ports"),
                    )
