"""SRV-named ServiceEntry endpoints: accepted with resolution DNS, refused wherever the
record's port or targets could not be what the entry says."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.names import check_address, is_srv_name
from tests.policy.test_service_entry import problems

PORT = {"number": 80, "name": "http", "protocol": "HTTP"}
SRV = {"address": "_http._tcp.api.example.com"}


@pytest.mark.parametrize(
    ("name", "srv"),
    [
        ("_http._tcp.api.example.com", True),
        ("_grpc-web._tcp.svc.cluster.local", True),
        ("_http._tcp.", False),
        ("http._tcp.api.example.com", False),
        ("_http.api.example.com", False),
        ("api.example.com", False),
    ],
)
def test_srv_names_are_rfc_2782_service_and_proto_labels_before_a_dns_name(name: str, srv: bool) -> None:
    assert is_srv_name(name) is srv


def test_an_srv_endpoint_with_resolution_dns_and_one_port_is_accepted() -> None:
    assert problems(resolution="DNS", ports=[PORT], endpoints=[SRV]) == []
    # targetPort still applies to the entry's other, non-SRV endpoints.
    mixed = [SRV, {"address": "api-fallback.example.com"}]
    assert problems(resolution="DNS", ports=[{**PORT, "targetPort": 8080}], endpoints=mixed) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"resolution": "DNS_ROUND_ROBIN", "ports": [PORT], "endpoints": [SRV]},
            "spec.endpoints[0].address: '_http._tcp.api.example.com' is an SRV name: it needs "
            "resolution DNS (each target an endpoint); DNS_ROUND_ROBIN connects to one name",
            id="dns-round-robin",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [PORT], "endpoints": [SRV]},
            "is not a valid IP address (resolution STATIC)",
            id="static",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "endpoints": [{**SRV, "ports": {"http": 8080}}]},
            "spec.endpoints[0].ports: an SRV endpoint's port comes from its SRV records; remove ports",
            id="endpoint-ports",
        ),
        pytest.param(
            {
                "resolution": "DNS",
                "ports": [PORT, {"number": 443, "name": "https", "protocol": "HTTPS"}],
                "endpoints": [SRV],
            },
            "spec.ports: an entry with SRV endpoints declares exactly one port",
            id="two-ports",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [{**PORT, "targetPort": 8080}], "endpoints": [SRV]},
            "spec.ports[0].targetPort: every endpoint is an SRV name, whose records give the port: "
            "remove targetPort",
            id="target-port",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "endpoints": [{"address": "_http._udp.api.example.com"}]},
            "mesh endpoints are reached over TCP: use _tcp",
            id="udp",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "endpoints": [{"address": "_http.example.com"}]},
            "an SRV name is _service._proto.name (RFC 2782)",
            id="not-srv",
        ),
    ],
)
def test_srv_endpoints_are_refused_where_the_entry_would_contradict_the_records(
    spec: dict[str, Any], message: str
) -> None:
    found = problems(**spec)
    assert len(found) == 1, found
    assert message in found[0]


def test_registered_workloads_cannot_announce_an_srv_name() -> None:
    """Only ServiceEntry endpoints may be SRV names; the registry's addresses stay addresses."""
    with pytest.raises(ValueError, match="invalid endpoint address"):
        check_address("_http._tcp.api.example.com", "endpoint address")
