"""ServiceEntry endpoints named by SRV records (``_service._tcp.name``, RFC 2782).

A meshlib extension (Istio and Envoy have no SRV resolution): with ``resolution: DNS`` an
endpoint address of that form is looked up as SRV, and every target of its lowest priority
becomes an endpoint on the port its record gives. The record owns the port, so the entry
must leave it to the record: one declared port (an SRV name names one service), no
per-endpoint ``ports``, and no ``targetPort`` unless other, non-SRV endpoints use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..errors import ConfigIssue
from ..names import is_srv_name

__all__ = ["check_srv_endpoints", "srv_lookups_missing"]

DNS_EXTRA = "dnspython is not installed: pip install 'meshlib[dns]'"

FieldPath = tuple[str | int, ...]


class _Port(Protocol):
    @property
    def target_port(self) -> int | None: ...


class _Endpoint(Protocol):
    @property
    def address(self) -> str | None: ...
    @property
    def ports(self) -> Mapping[str, int]: ...


def check_srv_endpoints(
    mode: str, ports: Sequence[_Port], endpoints: Sequence[_Endpoint]
) -> Iterator[tuple[FieldPath, str]]:
    """What a ServiceEntry with SRV-named endpoints may not also say (its field paths)."""
    srv = [i for i, e in enumerate(endpoints) if e.address is not None and is_srv_name(e.address)]
    if not srv:
        return
    for index in srv:
        path: FieldPath = ("endpoints", index, "address")
        if mode == "DNS_ROUND_ROBIN":
            yield (
                path,
                (
                    f"{endpoints[index].address!r} is an SRV name: it needs resolution DNS (each "
                    "target an endpoint); DNS_ROUND_ROBIN connects to one name"
                ),
            )
        if endpoints[index].ports:
            yield (
                ("endpoints", index, "ports"),
                ("an SRV endpoint's port comes from its SRV records; remove ports"),
            )
    if len(ports) != 1:
        yield (
            ("ports",),
            (
                "an entry with SRV endpoints declares exactly one port (an SRV name names one "
                "service and its records give the target ports); use one ServiceEntry per SRV service"
            ),
        )
    elif ports[0].target_port is not None and len(srv) == len(endpoints):
        yield (
            ("ports", 0, "targetPort"),
            ("every endpoint is an SRV name, whose records give the port: remove targetPort"),
        )


def srv_lookups_missing(resources: Iterable[Any]) -> list[ConfigIssue]:
    """In a workload: each SRV endpoint it cannot look up because dnspython (``meshlib[dns]``)
    is missing. The config service accepts such an entry (a workload with the extra can use
    it); one without the extra refuses the snapshot (its NACK names the entry) rather than
    keep an entry it would never find endpoints for."""
    found = [
        (resource, index, endpoint.address)
        for resource in resources
        if resource.kind == "ServiceEntry" and resource.spec.mode == "DNS"
        for index, endpoint in enumerate(resource.spec.endpoints)
        if endpoint.address is not None and is_srv_name(endpoint.address)
    ]
    if not found:
        return []
    try:
        import dns.asyncresolver  # noqa: F401  # the check itself: is the extra there?
    except ImportError:
        pass
    else:
        return []
    return [
        ConfigIssue(
            f"{address!r} is an SRV name and this workload cannot look SRV records up: {DNS_EXTRA}",
            resource=f"ServiceEntry {resource.namespace}/{resource.name}",
            path=f"spec.endpoints[{index}].address",
        )
        for resource, index, address in found
    ]
