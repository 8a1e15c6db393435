"""ServiceEntry validation: Istio's own rules, and precise refusals of what meshlib does not do."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.policy import parse_resource
from meshlib.policy.validate import format_path

PORT = {"number": 80, "name": "http", "protocol": "HTTP"}


def problems(**spec: Any) -> list[str]:
    spec.setdefault("hosts", ["api.example.com"])
    _resource, found = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "se", "namespace": "default"},
            "spec": spec,
        }
    )
    return [f"{format_path(path)}: {message}" for path, message in found]


def refused(**spec: Any) -> str:
    found = problems(**spec)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"hosts": ["*.bar.com"], "resolution": "NONE", "ports": [PORT]}, id="wildcard-none"),
        pytest.param(
            {
                "hosts": ["*.bar.com"],
                "resolution": "DNS",
                "ports": [PORT],
                "endpoints": [{"address": "a.bar.com"}],
            },
            id="wildcard-dns-with-endpoints",
        ),
        pytest.param(
            {"resolution": "NONE", "addresses": ["10.0.0.0/16", "192.0.2.1"], "ports": [PORT]}, id="cidr-none"
        ),
        pytest.param({"resolution": "DNS", "addresses": ["192.0.2.1"], "ports": [PORT]}, id="vip-dns"),
        pytest.param(
            {
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "ports": [PORT],
                "endpoints": [
                    {
                        "address": "10.0.0.1",
                        "serviceAccount": "api",
                        "weight": 3,
                        "labels": {"security.istio.io/tlsMode": "istio"},
                    }
                ],
            },
            id="static-mesh-internal",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [PORT], "workloadSelector": {"labels": {"app": "api"}}},
            id="selector",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "ports": [PORT],
                "endpoints": [{"address": "10.0.0.1"}],
                "subjectAltNames": ["spiffe://cluster.local/ns/default/sa/api"],
            },
            id="one-spiffe-san",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [{"number": 443, "name": "https", "protocol": "TLS"}]}, id="tls"
        ),
        pytest.param({"resolution": "DNS", "ports": [PORT], "exportTo": [".", "prod"]}, id="export-to"),
    ],
)
def test_istio_forms_meshlib_applies_are_accepted(spec: dict[str, Any]) -> None:
    assert problems(**spec) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        pytest.param(
            {"hosts": ["*.bar.com"], "resolution": "DNS", "ports": [PORT]},
            "spec.hosts[0]: hosts must be FQDN if no endpoints are provided for resolution mode DNS: "
            "'*.bar.com' is a wildcard (use resolution NONE",
            id="wildcard-dns-no-endpoints",
        ),
        pytest.param(
            {"hosts": ["*.bar.com"], "resolution": "DNS_ROUND_ROBIN", "ports": [PORT]},
            "hosts must be FQDN if no endpoints are provided for resolution mode DNS_ROUND_ROBIN",
            id="wildcard-dns-rr-no-endpoints",
        ),
        pytest.param(
            {"hosts": ["*.bar.com"], "resolution": "DYNAMIC_DNS", "ports": [PORT]},
            "spec.resolution: resolution DYNAMIC_DNS (Envoy's dynamic forward proxy) is not supported; "
            "use NONE",
            id="dynamic-dns",
        ),
        pytest.param(
            {"resolution": "DNS", "addresses": ["10.0.0.0/16"], "ports": [PORT]},
            "spec.addresses[0]: CIDR addresses are allowed only for NONE/STATIC resolution types",
            id="cidr-dns",
        ),
        pytest.param(
            {"resolution": "NONE", "addresses": ["10.0.0.300"], "ports": [PORT]},
            "spec.addresses[0]: '10.0.0.300' is not an IP address or a CIDR block",
            id="bad-address",
        ),
        pytest.param(
            {"resolution": "NONE", "ports": [{**PORT, "targetPort": 8080}]},
            "spec.ports[0].targetPort: targetPort has no effect when resolution mode is NONE",
            id="target-port-none",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [{"number": 27017, "name": "mongo", "protocol": "MONGO"}]},
            "spec.ports[0].protocol: protocol MONGO is not supported: meshlib's clients carry HTTP and gRPC",
            id="mongo",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"}]},
            "protocol TCP is not supported",
            id="tcp",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [{"number": 80, "name": "x", "protocol": "SPDY"}]},
            "spec.ports[0].protocol: unsupported protocol 'SPDY'",
            id="unknown-protocol",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [{"number": 80, "name": "Http_1"}]},
            "spec.ports[0].name: invalid port name 'Http_1'",
            id="port-name",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [PORT], "endpoints": [{"address": "db.example.com"}]},
            "spec.endpoints[0].address: endpoint address 'db.example.com' is not a valid IP address "
            "(resolution STATIC)",
            id="static-name",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "endpoints": [{"labels": {"a": "b"}}]},
            "spec.endpoints[0].address: address is required",
            id="no-address",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "ports": [PORT],
                "endpoints": [{"address": "10.0.0.1", "network": "west"}],
            },
            "spec.endpoints[0].network: network is not supported by meshlib: meshlib has no multi-network",
            id="network",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "ports": [PORT],
                "endpoints": [{"address": "10.0.0.1", "locality": "eu/a/b/c"}],
            },
            "spec.endpoints[0].locality: invalid locality 'eu/a/b/c'",
            id="locality",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "ports": [PORT],
                "endpoints": [{"address": "10.0.0.1", "ports": {"http": 0}}],
            },
            "spec.endpoints[0].ports.http: port must be between 1-65535; got 0",
            id="endpoint-port",
        ),
        pytest.param(
            {"resolution": "NONE", "ports": [PORT], "workloadSelector": {"labels": {"app": "x"}}},
            "spec.workloadSelector: workloadSelector has no effect when resolution mode is NONE",
            id="selector-none",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [PORT], "workloadSelector": {"labels": {"app": "*"}}},
            "spec.workloadSelector.labels.app: wildcard is not supported in selector",
            id="selector-wildcard",
        ),
        pytest.param(
            {"resolution": "STATIC", "ports": [PORT], "subjectAltNames": ["api.example.com"]},
            "spec.subjectAltNames[0]: 'api.example.com' is not a SPIFFE ID",
            id="dns-san",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "ports": [PORT],
                "subjectAltNames": ["spiffe://cluster.local/ns/a/sa/x", "spiffe://cluster.local/ns/a/sa/y"],
            },
            "spec.subjectAltNames: more than one subjectAltName is not supported",
            id="two-sans",
        ),
        pytest.param(
            {
                "resolution": "STATIC",
                "location": "MESH_INTERNAL",
                "ports": [PORT],
                "endpoints": [{"address": "10.0.0.1", "labels": {"security.istio.io/tlsMode": "istio"}}],
            },
            "mesh mTLS to this endpoint needs the identity it proves: set its serviceAccount",
            id="tls-mode-without-identity",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "exportTo": ["*", "prod"]},
            "spec.exportTo: '*' and '~' cannot be combined with other exportTo entries",
            id="export-to-star-and-more",
        ),
        pytest.param(
            {"resolution": "DNS", "ports": [PORT], "exportTo": ["prod", "prod"]},
            "spec.exportTo[1]: duplicate entries in exportTo for entry prod",
            id="export-to-duplicate",
        ),
    ],
)
def test_refusals_name_the_field_and_say_what_to_do(spec: dict[str, Any], message: str) -> None:
    assert message in refused(**spec)
