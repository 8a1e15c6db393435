"""Discovery annotations on ServiceEntry: the rules (offline, as ``meshctl validate`` and every
workload apply them) and how discovered instances become the entry's endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from meshlib.controlplane.consul_source import ConsulSettings, instances_of
from meshlib.errors import MeshError
from meshlib.policy.discovered_endpoints import with_instances
from meshlib.policy.discovery import ConsulTarget, consul_target
from meshlib.policy.resources import ServiceEntry
from meshlib.policy.validate import format_path, parse_document
from meshlib.protocol import decode_snapshot


def entry(annotations: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "web", "annotations": annotations},
        "spec": {
            "hosts": ["web.service.consul"],
            "resolution": "STATIC",
            "ports": [{"number": 80, "name": "http"}],
            **spec,
        },
    }


def problems(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    _, found = parse_document(manifest)
    return [(format_path(path), message) for path, message in found]


CONSUL = {"discovery.meshlib.io/source": "consul"}


def test_the_service_name_defaults_to_the_first_label_of_the_host() -> None:
    parsed, found = parse_document(entry(CONSUL))
    assert found == []
    assert isinstance(parsed, ServiceEntry)
    assert consul_target(parsed.metadata.annotations, parsed.spec.hosts) == ConsulTarget("web")
    named = {
        **CONSUL,
        "discovery.meshlib.io/consul-service": "frontend",
        "discovery.meshlib.io/consul-datacenter": "dc2",
    }
    parsed, _ = parse_document(entry(named))
    assert isinstance(parsed, ServiceEntry)
    target = consul_target(parsed.metadata.annotations, parsed.spec.hosts)
    assert target == ConsulTarget("frontend", "dc2")
    assert target.name == "frontend@dc2"


@pytest.mark.parametrize(
    ("annotations", "spec", "path", "words"),
    [
        (CONSUL, {"resolution": "DNS_ROUND_ROBIN"}, "spec.resolution", "needs resolution STATIC"),
        (CONSUL, {"endpoints": [{"address": "10.0.0.1"}]}, "spec.endpoints", "remove the listed endpoints"),
        (
            CONSUL,
            {"ports": [{"number": 80, "name": "http", "targetPort": 8080}]},
            "spec.ports[0].targetPort",
            "remove targetPort",
        ),
        (CONSUL, {"hosts": ["*.example.com"]}, "metadata.annotations", "name it with"),
        ({"discovery.meshlib.io/source": "dns"}, {}, "metadata.annotations", "unknown discovery source"),
        (
            {"discovery.meshlib.io/consul-datacenter": "dc2"},
            {},
            "metadata.annotations",
            "has effect only with",
        ),
        ({**CONSUL, "discovery.meshlib.io/tag": "v1"}, {}, "metadata.annotations", "unknown annotation"),
    ],
)
def test_inconsistent_entries_are_refused_with_what_to_do(
    annotations: dict[str, str], spec: dict[str, Any], path: str, words: str
) -> None:
    found = problems(entry(annotations, **spec))
    assert any(p.startswith(path) and words in m for p, m in found), found


def test_other_annotations_are_left_alone() -> None:
    assert problems(entry({"example.com/owner": "team-a"})) == []


def consul_answer(**service: Any) -> dict[str, Any]:
    node = {"Node": "n1", "Address": "10.0.0.7", "Datacenter": "dc1"}
    return {"Node": node, "Service": {"ID": "web-1", "Service": "web", "Port": 8080, **service}, "Checks": []}


def test_consul_instances_take_address_port_labels_locality_and_weight() -> None:
    found = instances_of(
        [
            consul_answer(
                Address="10.0.0.1",
                Meta={"version": "v1"},
                Tags=["version=v2", "zone|a", "canary", "security.istio.io/tlsMode=istio", "bad tag!"],
                Weights={"Passing": 3, "Warning": 1},
            ),
            consul_answer(ID="web-2", Address="", Port=9090),  # Node.Address stands in
            consul_answer(ID="web-3", Port=0),  # no port: not an endpoint
        ],
        "",
    )
    assert found == [
        {
            "address": "10.0.0.1",
            "port": 8080,
            "labels": {"canary": "true", "version": "v1", "zone": "a"},  # Meta wins over tags
            "locality": "dc1",
            "weight": 3,
        },
        {"address": "10.0.0.7", "port": 9090, "labels": {}, "locality": "dc1"},
    ]


def test_instances_become_endpoints_on_the_entry_port_in_every_snapshot() -> None:
    instances = [
        {"address": "10.0.0.1", "port": 8080, "labels": {"version": "v1"}, "locality": "dc1"},
        {"address": "web-2.node.consul", "port": 8081, "labels": {}},  # a name: not for STATIC
    ]
    parsed, _ = parse_document(entry(CONSUL))
    assert isinstance(parsed, ServiceEntry)
    endpoints = with_instances(parsed, instances).spec.endpoints
    assert [(e.address, e.ports, dict(e.labels)) for e in endpoints] == [
        ("10.0.0.1", {"http": 8080}, {"version": "v1"})
    ]
    payload = {
        "version": 3,
        "resources": [entry(CONSUL)],
        "discovered": [{"source": "consul", "service": "web", "datacenter": "", "instances": instances}],
    }
    snapshot = decode_snapshot(payload)
    found = snapshot.endpoints("web.service.consul")
    assert [(e.address, e.port, e.service_port) for e in found] == [("10.0.0.1", 8080, 80)]
    # No record yet (the first answer has not come): no endpoints, not an error.
    assert decode_snapshot({**payload, "discovered": []}).endpoints("web.service.consul") == ()


def test_settings_read_the_token_from_a_file_and_never_show_it(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN_FILE", raising=False)
    token = tmp_path / "consul.token"
    token.write_text("s3cr3t-token\n")
    settings = ConsulSettings.from_options("http://127.0.0.1:8500", token)
    assert settings.token == "s3cr3t-token"
    assert "s3cr3t" not in repr(settings)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    assert ConsulSettings.from_options("http://127.0.0.1:8500").token == "from-env"
    for bad in ("127.0.0.1:8500", "http://127.0.0.1:port", "http://consul/v1/"):
        with pytest.raises(MeshError, match="--consul"):
            ConsulSettings.from_options(bad)
    with pytest.raises(MeshError, match="--consul-token-file") as refused:
        ConsulSettings.from_options("http://user:hunter2@127.0.0.1:8500")
    assert "hunter2" not in str(refused.value)  # the URL's secret is never echoed
    with pytest.raises(MeshError, match="consul-datacenter annotation"):
        ConsulSettings.from_options("http://127.0.0.1:8500?dc=dc2")


def test_a_workload_reading_policy_files_refuses_an_entry_that_names_consul(tmp_path: Any) -> None:
    import json

    from meshlib import Mesh
    from meshlib.errors import ConfigError

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(entry(CONSUL)))
    with pytest.raises(ConfigError, match="only the config service asks Consul"):
        Mesh("frontend", config=policy, data_dir=tmp_path / "wl").start()
